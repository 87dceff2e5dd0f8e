# RT-DETR's COCO data: the official training augmentation with mmdet's transforms, every
# image resized to 640 x 640 without keeping the aspect ratio (train and test).
# Official (torchvision v2) -> here:
#   RandomPhotometricDistort(p=0.5)   -> PhotoMetricDistortion (each step with p 0.5;
#                                        mmdet's brightness is additive, +-32)
#   RandomZoomOut(fill=0)             -> Expand(mean 0, ratio 1-4, prob 0.5)
#   RandomIoUCrop(p=0.8)              -> RandomApply(MinIoURandomCrop, prob 0.8); the same
#                                        IoU options (none, 0.1-0.9, any), min crop 0.3
#   SanitizeBoundingBoxes(min_size=1) -> FilterAnnotations(1 px, keep the image)
#   RandomHorizontalFlip, Resize      -> RandomFlip(0.5), Resize(640 x 640, keep_ratio=False)
# The images without boxes stay in the training set, as in the official data.
# The schedule configs switch the first three off for the last epochs (PipelineSwitchHook).
_base_ = './coco_detection.py'

backend_args = None
strong_augment = [
    dict(type='PhotoMetricDistortion'),
    dict(type='Expand', mean=[0, 0, 0], to_rgb=True, ratio_range=(1, 4), prob=0.5),
    dict(type='RandomApply', prob=0.8,
         transforms=[dict(type='MinIoURandomCrop', min_ious=(0.1, 0.3, 0.5, 0.7, 0.9),
                          min_crop_size=0.3)]),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    *strong_augment,
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=(640, 640), keep_ratio=False),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs'),
]
# the pipeline of the last epochs: no photometric distortion, zoom-out or IoU crop
final_train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=(640, 640), keep_ratio=False),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(640, 640), keep_ratio=False),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]

# batch 4 per GPU; the official total is 16 = 4 GPUs x 4
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    batch_sampler=None,
    dataset=dict(filter_cfg=dict(filter_empty_gt=False), pipeline=train_pipeline))
val_dataloader = dict(batch_size=8, num_workers=4, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
