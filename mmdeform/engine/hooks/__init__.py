from .batch_augment_switch_hook import BatchAugmentSwitchHook
from .checkpoint_hook import CheckpointHook
from .deploy_hook import DeployHook
from .finite_loss_hook import FiniteLossHook, NonFiniteLossError
from .progress_bar_hook import EvalProgressBarHook
from .rng_state_hook import RNGStateHook

__all__ = ['BatchAugmentSwitchHook', 'CheckpointHook', 'DeployHook', 'EvalProgressBarHook',
           'FiniteLossHook', 'NonFiniteLossError', 'RNGStateHook']
