from .posteriors import BoltzmannPosterior, GaussianPosterior

__all__ = ['BoltzmannPosterior', 'GaussianPosterior']
