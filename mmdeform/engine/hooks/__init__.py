from .progress_bar_hook import EvalProgressBarHook
from .rng_state_hook import RNGStateHook

__all__ = ['EvalProgressBarHook', 'RNGStateHook']
