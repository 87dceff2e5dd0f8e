from .amp_optim_wrapper import AmpOptimWrapper
from .hooks import (BatchAugmentSwitchHook, CheckpointHook, EvalProgressBarHook, FiniteLossHook,
                    NonFiniteLossError, RNGStateHook)
from .optim_constructor import LrMultOptimWrapperConstructor
from .runner import Runner

__all__ = ["Runner", "AmpOptimWrapper", "RNGStateHook", "EvalProgressBarHook", "CheckpointHook",
           "FiniteLossHook", "NonFiniteLossError", "BatchAugmentSwitchHook",
           "LrMultOptimWrapperConstructor"]
