from .accuracy import TieAwareAccuracy, tie_aware_topk_accuracy
from .retrieval import ImageTextRetrieval

__all__ = ['ImageTextRetrieval', 'TieAwareAccuracy', 'tie_aware_topk_accuracy']
