# DETR R50, the official 500-epoch recipe (42.0 box AP on COCO val2017).
#
# Total batch 64 = 16 GPUs x 4 images, as in the paper. With fewer GPUs, pass
# --auto-scale-lr to scale the lr linearly from that base, e.g.
#   tools/dist_train.sh configs/detr.py 8 --auto-scale-lr   # 8 x 4 = 32, lr 5e-5
_base_ = [
    './_base_/models/detr_r50.py',
    './_base_/datasets/coco_detr_augment.py',
    './_base_/schedules/detr_500e.py',
    './_base_/default_runtime.py',
]
train_dataloader = dict(batch_size=4)
auto_scale_lr = dict(enable=False, base_batch_size=64)
