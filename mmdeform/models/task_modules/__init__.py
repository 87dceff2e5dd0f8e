from .hungarian_assigner import HungarianAssigner, Matching
from .match_costs import BBoxL1Cost, ClassificationCost, FocalLossCost, IoUCost

__all__ = ['HungarianAssigner', 'Matching', 'BBoxL1Cost', 'ClassificationCost',
           'FocalLossCost', 'IoUCost']
