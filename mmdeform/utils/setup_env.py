import datetime
import warnings

from mmengine import DefaultScope


def register_all_modules(init_default_scope: bool = True) -> None:
    """Import every module that registers into mmdeform's and mmdet's registries.

    Args:
        init_default_scope: make ``mmdeform`` the current default scope, so
            that ``MODELS.build(dict(type='DETR'))`` builds mmdeform's DETR.
    """
    import mmdet.utils
    mmdet.utils.register_all_modules(init_default_scope=False)

    import mmdeform.datasets  # noqa: F401
    import mmdeform.engine  # noqa: F401
    import mmdeform.models  # noqa: F401

    if not init_default_scope:
        return
    current = DefaultScope.get_current_instance()
    if current is None:
        DefaultScope.get_instance('mmdeform', scope_name='mmdeform')
    elif current.scope_name != 'mmdeform':
        warnings.warn(f'The current default scope "{current.scope_name}" is not '
                      '"mmdeform"; register_all_modules makes a new one named '
                      '"mmdeform-<timestamp>" and switches to it.')
        new_name = f'mmdeform-{datetime.datetime.now()}'
        DefaultScope.get_instance(new_name, scope_name='mmdeform')
