"""Stop the data preprocessor's batch augmentation (multi-scale) from an epoch on."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmdeform.registry import HOOKS


@HOOKS.register_module()
class BatchAugmentSwitchHook(Hook):
    """From epoch ``switch_epoch`` (0-based) on, train without the
    ``data_preprocessor.batch_augments`` (e.g. mmdet's ``BatchSyncRandomResize``):
    RT-DETR trains its last epochs at the input size only. Checked at every epoch,
    so a resumed run switches too. ``PipelineSwitchHook`` does the same for the
    dataset pipeline.
    """
    priority = 'NORMAL'

    def __init__(self, switch_epoch: int) -> None:
        self.switch_epoch = switch_epoch

    def before_train_epoch(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        preprocessor = model.data_preprocessor
        if runner.epoch >= self.switch_epoch and preprocessor.batch_augments is not None:
            runner.logger.info(f'BatchAugmentSwitchHook: no batch augmentation from epoch '
                               f'{runner.epoch + 1} on')
            preprocessor.batch_augments = None
