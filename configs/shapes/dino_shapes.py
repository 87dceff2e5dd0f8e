# DINO on the built-in shapes dataset, for the CPU demo next to the Deformable DETR
# one (deformable_detr_refine_two_stage_shapes.py), whose backbone, width (64), depth
# (3 + 3 layers), 50 queries, losses, lr and per-layer class/box branches it keeps:
# only DINO's three contributions differ. 50 anchor-box queries from mixed query
# selection, look-forward-twice, and contrastive denoising with a small budget (16
# queries per group set, at most 32), since an image holds at most 6 shapes and
# every denoising query costs decoder time on 2 cores.
#   bash tools/demo.sh configs/shapes/dino_shapes.py
_base_ = './deformable_detr_refine_two_stage_shapes.py'

model = dict(
    type='DINO',
    query_selection='mixed',
    look_forward_twice=True,
    dn_cfg=dict(label_noise_scale=0.5, box_noise_scale=1.0, num_dn_queries=16,
                max_dn_queries=32),
    bbox_head=dict(type='DINOHead', share_pred_layer=False))

# The same wall time as the Deformable DETR demo on 2 cores: a DINO iteration costs
# about 12 % more (the denoising queries in the decoder and their losses), so 12
# epochs instead of 14, with the lr drop after epoch 11 as there.
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[11], gamma=0.1),
]
