# Deformable DETR R50, multi-scale, 50 epochs (44.5 box AP on COCO val2017).
#
# Total batch 32 = 8 GPUs x 4 images, as the official runs:
#   tools/dist_train.sh configs/deformable_detr.py 8
# With another total batch, pass --auto-scale-lr to scale the lr linearly from 32.
_base_ = [
    './_base_/models/deformable_detr_r50.py',
    './_base_/datasets/coco_detr_augment.py',
    './_base_/schedules/deformable_detr_50e.py',
    './_base_/default_runtime.py',
]
train_dataloader = dict(batch_size=4)
auto_scale_lr = dict(enable=False, base_batch_size=32)
