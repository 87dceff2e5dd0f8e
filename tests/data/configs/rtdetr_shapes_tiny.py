# RT-DETRv2-R18's recipe (EMA, warm-up, lr groups, augmentation stop, batch multi-scale)
# on the generated shapes at 128 x 128, made tiny for tests: 2 epochs, the strong and
# multi-scale augmentation stop after the first, no workers.
_base_ = '../../../configs/rtdetr/rtdetrv2_r18vd_120e_coco.py'

img_scale = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PhotoMetricDistortion'),
    dict(type='Expand', mean=[0, 0, 0], to_rgb=True, ratio_range=(1, 4), prob=0.5),
    dict(type='RandomApply', prob=0.8, transforms=[dict(type='MinIoURandomCrop')]),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=img_scale, keep_ratio=False),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs'),
]
final_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=img_scale, keep_ratio=False),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=False),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
model = dict(
    num_queries=50,
    dn_cfg=dict(num_dn_queries=16),
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchSyncRandomResize', random_size_range=(96, 160), interval=1,
             size_divisor=32)
    ]),
    bbox_head=dict(num_classes=4),
    test_cfg=dict(max_per_img=50))
data_root = 'data/shapes/'
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, type='ShapesDataset', data_root=data_root,
                 ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
                 filter_cfg=dict(filter_empty_gt=False), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, type='ShapesDataset', data_root=data_root,
                 ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
                 test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader

max_epochs = 2
stop_epoch = 1
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=2),
]
custom_hooks = [
    dict(type='RNGStateHook'),
    {{_base_.ema_hook}},
    dict(type='PipelineSwitchHook', switch_epoch=stop_epoch, switch_pipeline=final_train_pipeline),
    dict(type='BatchAugmentSwitchHook', switch_epoch=stop_epoch),
]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
log_processor = dict(by_epoch=True)
randomness = dict(seed=0)
