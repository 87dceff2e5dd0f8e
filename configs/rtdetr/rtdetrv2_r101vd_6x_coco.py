# RT-DETRv2-X, ResNet101-vd (54.3 / 72.8 AP / AP50, official): a 384-wide hybrid encoder
# with FFN 2048; the backbone at lr 1e-6; 72 epochs as R50.
_base_ = './rtdetrv2_r50vd_6x_coco.py'

model = dict(
    backbone=dict(depth=101),
    neck=[
        dict(type='HybridEncoder', in_channels=[512, 1024, 2048], hidden_dim=384,
             feedforward_channels=2048),
        dict(type='ChannelMapper', in_channels=[384, 384, 384], kernel_size=1,
             out_channels=256, norm_cfg=dict(type='BN'), act_cfg=None, num_outs=3),
    ])

optim_wrapper = dict(paramwise_cfg=dict(lr_mults={'backbone': 0.01}))
