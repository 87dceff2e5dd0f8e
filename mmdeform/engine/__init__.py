from .hooks import (CheckpointHook, EvalProgressBarHook, FiniteLossHook, NonFiniteLossError,
                    RNGStateHook)
from .runner import Runner

__all__ = ["Runner", "RNGStateHook", "EvalProgressBarHook", "CheckpointHook", "FiniteLossHook",
           "NonFiniteLossError"]
