# DINO on the built-in shapes dataset, for the CPU demo next to the Deformable DETR
# one (deformable_detr_refine_two_stage_shapes.py), whose backbone, width (64), depth
# (3 + 3 layers), 50 queries and schedule it keeps: only what DINO changes differs.
# 50 anchor-box queries from mixed query selection, look-forward-twice, one shared
# class/box branch pair for the decoder layers, and contrastive denoising with a
# small budget (30 queries per group set, at most 60), since an image holds at most
# 6 shapes and every denoising query costs decoder time on 2 cores.
#   bash tools/demo.sh configs/shapes/dino_shapes.py
_base_ = './deformable_detr_refine_two_stage_shapes.py'

model = dict(
    type='DINO',
    query_selection='mixed',
    look_forward_twice=True,
    dn_cfg=dict(label_noise_scale=0.5, box_noise_scale=1.0, num_dn_queries=30,
                max_dn_queries=60),
    positional_encoding=dict(temperature=20, offset=0.0),
    bbox_head=dict(type='DINOHead', share_pred_layer=True, reference_eps=1e-3,
                   loss_cls=dict(loss_weight=1.0)))
