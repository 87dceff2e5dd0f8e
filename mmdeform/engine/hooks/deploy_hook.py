"""Fuse the detector for inference (``switch_to_deploy``) before it is tested."""
from mmengine.hooks import Hook

from mmdeform.registry import HOOKS
from mmdeform.utils.errors import InputError


@HOOKS.register_module()
class DeployHook(Hook):
    """Calls the detector's ``switch_to_deploy()`` once, after the checkpoint is loaded
    and any EMA weights are in place (``before_test_epoch``, lowest priority), and logs
    what was fused; ``tools/test.py --deploy`` adds it.

    The fused model has other parameters than the EMA copy, so an ``EMAHook`` must not
    run with it: ``tools/test.py`` leaves it out (testing loads the checkpoint's
    ``state_dict``, which holds the EMA weights, into the model and the EMA copy alike,
    so the hook changes nothing there).
    """

    priority = 'LOWEST'

    def before_run(self, runner) -> None:
        from mmdeform.engine.runner import unwrap
        model = unwrap(runner.model)
        if not callable(getattr(model, 'switch_to_deploy', None)):
            raise InputError(f'--deploy: {type(model).__name__} has no switch_to_deploy() '
                             '(RTDETR has one); run without --deploy')
        ema = [type(h).__name__ for h in runner.hooks if type(h).__name__.endswith('EMAHook')]
        if ema:
            raise InputError(f'DeployHook: {ema[0]} would swap unfused EMA weights into the '
                             'fused model; remove it from custom_hooks for testing')

    def before_test_epoch(self, runner) -> None:
        from mmdeform.engine.runner import unwrap
        model = unwrap(runner.model)
        if getattr(model, 'deployed', False):
            return
        counts = model.switch_to_deploy()
        runner.logger.info(
            f'--deploy: {type(model).__name__} fused: {counts["repvgg_blocks"]} RepVGG blocks '
            f'into one 3x3 conv each, {counts["conv_bn"]} BatchNorm layers folded into their '
            f'convs, {counts["bn_left"]} BatchNorm layers left')
