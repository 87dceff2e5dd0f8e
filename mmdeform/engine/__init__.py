from .amp_optim_wrapper import AmpOptimWrapper
from .hooks import (CheckpointHook, EvalProgressBarHook, FiniteLossHook, NonFiniteLossError,
                    RNGStateHook)
from .runner import Runner

__all__ = ["Runner", "AmpOptimWrapper", "RNGStateHook", "EvalProgressBarHook", "CheckpointHook",
           "FiniteLossHook", "NonFiniteLossError"]
