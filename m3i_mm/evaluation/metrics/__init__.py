from .retrieval import ImageTextRetrieval

__all__ = ['ImageTextRetrieval']
