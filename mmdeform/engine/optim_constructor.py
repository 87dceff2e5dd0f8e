"""An optimizer constructor whose per-name lr multipliers leave the weight-decay rules alone."""
from mmengine.optim import DefaultOptimWrapperConstructor

from mmdeform.registry import OPTIM_WRAPPER_CONSTRUCTORS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LrMultOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's constructor plus ``paramwise_cfg.lr_mults``: ``{name substring: factor}``
    on the lr of the matching parameters (the longest matching key wins).

    mmengine's ``custom_keys`` switch the other rules off for the parameters they
    match, so ``custom_keys={'backbone': dict(lr_mult=0.5)}`` with
    ``norm_decay_mult=0`` would still decay the backbone's norms. RT-DETR's R34
    (and v1's R18/R34) train the backbone at a lower lr *and* without weight decay
    on its norms; here ``norm_decay_mult`` / ``bias_decay_mult`` apply everywhere
    and ``lr_mults`` only scale the lr.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        self.lr_mults = dict(paramwise_cfg.pop('lr_mults', {}))
        if self.lr_mults:  # a non-empty paramwise_cfg makes mmengine call add_params
            paramwise_cfg.setdefault('custom_keys', {})
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params, module, prefix: str = '', is_dcn_module=None) -> None:
        super().add_params(params, module, prefix, is_dcn_module)
        if prefix or not self.lr_mults:  # children are added by the top-level call
            return
        names = {id(p): name for name, p in module.named_parameters()}
        keys = sorted(self.lr_mults, key=len, reverse=True)
        for group in params:
            name = names[id(group['params'][0])]
            key = next((k for k in keys if k in name), None)
            if key is not None:
                group['lr'] = group.get('lr', self.base_lr) * self.lr_mults[key]
