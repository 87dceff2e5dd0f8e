from .hooks import EvalProgressBarHook, RNGStateHook
from .runner import Runner

__all__ = ["Runner", "RNGStateHook", "EvalProgressBarHook"]
