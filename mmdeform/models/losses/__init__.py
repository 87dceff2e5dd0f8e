from .varifocal_loss import DetrVarifocalLoss

__all__ = ['DetrVarifocalLoss']
