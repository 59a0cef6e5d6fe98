from .barlow_twins import BarlowTwinsPosterior
from .codebook import CodebookBoltzmannPosterior
from .dense_boltzmann import DenseBoltzmannPosterior
from .federated_loss import FederatedSigmoidLoss
from .posteriors import BoltzmannPosterior, GaussianPosterior

__all__ = [
    'BarlowTwinsPosterior', 'BoltzmannPosterior',
    'CodebookBoltzmannPosterior', 'DenseBoltzmannPosterior',
    'FederatedSigmoidLoss', 'GaussianPosterior'
]
