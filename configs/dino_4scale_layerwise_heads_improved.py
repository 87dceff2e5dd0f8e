# mmdet 3.3.0's "improved" DINO R50 4-scale (dino-4scale_r50_improved_8xb2-12e_coco.py,
# 50.1 box AP): Deformable DETR's positional encoding (temperature 10000, offset -0.5),
# 300 denoising queries per group budget, focal loss weight 2, the whole backbone
# trained, lr 2e-4 with x0.1 for the backbone, sampling offsets and reference points.
_base_ = './dino_4scale_layerwise_heads.py'
model = dict(
    backbone=dict(frozen_stages=-1),
    positional_encoding=dict(offset=-0.5, temperature=10000),
    dn_cfg=dict(num_dn_queries=300, max_dn_queries=600),
    bbox_head=dict(loss_cls=dict(loss_weight=2.0)))
optim_wrapper = dict(
    optimizer=dict(lr=2e-4),
    paramwise_cfg=dict(custom_keys={'sampling_offsets': dict(lr_mult=0.1),
                                    'reference_points': dict(lr_mult=0.1)}))
