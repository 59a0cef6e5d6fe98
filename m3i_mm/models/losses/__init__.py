from .federated_loss import FederatedSigmoidLoss
from .posteriors import BoltzmannPosterior, GaussianPosterior

__all__ = ['BoltzmannPosterior', 'FederatedSigmoidLoss', 'GaussianPosterior']
