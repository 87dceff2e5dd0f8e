"""mmdeform's registries: children of mmdet's, under the scope ``mmdeform``.

A config that sets ``default_scope = 'mmdeform'`` resolves a ``type`` here
first and then in mmdet and mmengine, so mmdet's datasets, transforms,
ResNet, ChannelMapper, losses and ``CocoMetric`` are used by their plain names.
Every mmdet registry gets a child, so that the Runner never falls back to
another scope with a warning. ``locations`` make a registry import the
modules that fill it the first time it is searched (``mmdeform.ops.deform_conv``
replaces mmcv's ``DCNv2`` conv layer in this scope).
"""
from mmdet import registry as mmdet_registry
from mmengine.registry import Registry


def _child(attr: str, *locations: str) -> Registry:
    parent = getattr(mmdet_registry, attr)
    return Registry(
        parent.name, parent=parent, scope='mmdeform', locations=list(locations))


RUNNERS = _child('RUNNERS')
RUNNER_CONSTRUCTORS = _child('RUNNER_CONSTRUCTORS')
LOOPS = _child('LOOPS')
HOOKS = _child('HOOKS', 'mmdeform.engine')
LOG_PROCESSORS = _child('LOG_PROCESSORS')
DATASETS = _child('DATASETS', 'mmdeform.datasets')
DATA_SAMPLERS = _child('DATA_SAMPLERS')
TRANSFORMS = _child('TRANSFORMS', 'mmdeform.datasets')
MODELS = _child('MODELS', 'mmdeform.models', 'mmdeform.ops.deform_conv')
MODEL_WRAPPERS = _child('MODEL_WRAPPERS', 'mmdeform.engine')
WEIGHT_INITIALIZERS = _child('WEIGHT_INITIALIZERS')
OPTIMIZERS = _child('OPTIMIZERS')
OPTIM_WRAPPERS = _child('OPTIM_WRAPPERS', 'mmdeform.engine')
OPTIM_WRAPPER_CONSTRUCTORS = _child('OPTIM_WRAPPER_CONSTRUCTORS', 'mmdeform.engine')
PARAM_SCHEDULERS = _child('PARAM_SCHEDULERS')
METRICS = _child('METRICS')
EVALUATOR = _child('EVALUATOR')
TASK_UTILS = _child('TASK_UTILS', 'mmdeform.models')
VISUALIZERS = _child('VISUALIZERS')
VISBACKENDS = _child('VISBACKENDS')
