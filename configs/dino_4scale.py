# DINO R50 4-scale, the official recipe (49.0 box AP on COCO val2017 after 12 epochs):
# Deformable DETR's ResNet-50 + 4-level neck (conv with bias + GN) and 6 + 6 deformable
# layers, with FFN 2048 and no dropout; 900 anchor-box queries from mixed query
# selection; look-forward-twice; contrastive denoising (100 queries per group budget,
# label noise 0.5, box noise 1.0, as the official scripts pass). One class Linear and
# one box MLP are shared by the 6 decoder layers; the encoder proposals have their own.
#
# Total batch 16 = 8 GPUs x 2 images, as the official runs:
#   tools/dist_train.sh configs/dino_4scale.py 8
# With another total batch, pass --auto-scale-lr to scale the lr linearly from 16.
_base_ = [
    './_base_/models/deformable_detr_r50.py',
    './_base_/datasets/coco_detr_augment.py',
    './_base_/schedules/deformable_detr_50e.py',
    './_base_/default_runtime.py',
]
model = dict(
    type='DINO',
    num_queries=900,
    with_box_refine=True,
    as_two_stage=True,
    query_selection='mixed',
    look_forward_twice=True,
    dn_cfg=dict(label_noise_scale=0.5, box_noise_scale=1.0, num_dn_queries=100,
                max_dn_queries=200),  # the label embedding has num_classes + 1 rows
    positional_encoding=dict(num_feats=128, normalize=True, offset=0.0, temperature=20),
    encoder=dict(feedforward_channels=2048, dropout=0.0),
    decoder=dict(feedforward_channels=2048, dropout=0.0),
    bbox_head=dict(type='DINOHead', share_pred_layer=True, reference_eps=1e-3,
                   loss_cls=dict(loss_weight=1.0)),
    test_cfg=dict(max_per_img=300))

# the official data keeps the images without boxes (their denoising losses are zero)
train_dataloader = dict(batch_size=2, dataset=dict(filter_cfg=dict(filter_empty_gt=False)))

# AdamW lr 1e-4, the backbone at 1e-5 (and nothing else scaled), weight decay 1e-4,
# gradient-norm clipping at 0.1; 12 epochs, lr x0.1 after epoch 11
optim_wrapper = dict(
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(_delete_=True, custom_keys={'backbone': dict(lr_mult=0.1)}))
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[11], gamma=0.1)
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
