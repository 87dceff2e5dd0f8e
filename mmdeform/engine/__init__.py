from .hooks import RNGStateHook
from .runner import Runner

__all__ = ['Runner', 'RNGStateHook']
