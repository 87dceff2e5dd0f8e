# The backbone optimiser of the official DAT detection configs (LeapLabTHU/DAT-Detection):
# AdamW with weight decay 0.05, none on the LayerNorms and the position-bias tables
# (rpe_table, rpb, relative_position_bias_table). A DAT detector config lists this file
# in its _base_ and adds the keys to its paramwise_cfg:
#   optim_wrapper = dict(paramwise_cfg=dict(custom_keys=_base_.dat_backbone_custom_keys))
# so the detector keeps its own lr, weight decay and backbone lr multiplier (x0.1) for
# everything else. mmengine applies the longest matching key, so every key here is
# longer than 'backbone'; DAT's LayerNorms are the only parameters named
# '*.norm.weight' / '*.norm.bias' in these detectors.
_no_decay = dict(lr_mult=0.1, weight_decay=0.0)
dat_backbone_custom_keys = {
    'backbone': dict(lr_mult=0.1, weight_decay=0.05),
    '.norm.weight': _no_decay,
    '.norm.bias': _no_decay,
    'rpe_table': _no_decay,
    'relative_position_bias_table': _no_decay,
    # DAT++'s neighbourhood blocks sit at the even indices of its stages
    **{f'attns.{d}.rpb': _no_decay for d in range(0, 18, 2)},
}
