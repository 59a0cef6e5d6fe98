from .dense_boltzmann import DenseBoltzmannPosterior
from .federated_loss import FederatedSigmoidLoss
from .posteriors import BoltzmannPosterior, GaussianPosterior

__all__ = [
    'BoltzmannPosterior', 'DenseBoltzmannPosterior', 'FederatedSigmoidLoss',
    'GaussianPosterior'
]
