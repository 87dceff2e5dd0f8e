# The shapes Deformable DETR (refine, two-stage), shrunk for the test that 2 processes x
# batch 2 train like 1 process x batch 4: every image resized to exactly 64 x 64 (no
# padding, so both runs see the same pixels), no random flips, no dropout, BatchNorm
# frozen (as in the COCO configs), plain SGD (an update linear in the gradient), and
# 3 iterations. docs/reliability.md derives the tolerance.
_base_ = '../../../configs/shapes/deformable_detr_refine_two_stage_shapes.py'

model = dict(
    num_queries=16,
    backbone=dict(norm_cfg=dict(type='BN', requires_grad=False), norm_eval=True),
    encoder=dict(num_layers=1), decoder=dict(num_layers=2),
    test_cfg=dict(max_per_img=16))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(64, 64), keep_ratio=False),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False)
test_dataloader = val_dataloader
optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=dict(type='SGD', lr=0.01))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=3, val_interval=1000)
param_scheduler = []
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=3, by_epoch=False),
                     visualization=dict(draw=False))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
