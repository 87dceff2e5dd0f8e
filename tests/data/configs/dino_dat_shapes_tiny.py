# The shapes DINO-on-DAT++ config made tiny for tests: iteration-based, no workers, a
# checkpoint every 2 iterations.
_base_ = '../../../configs/shapes/dino_dat_shapes.py'

train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False)
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False)
test_dataloader = val_dataloader
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2, val_interval=1000)
param_scheduler = []
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2, by_epoch=False))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
