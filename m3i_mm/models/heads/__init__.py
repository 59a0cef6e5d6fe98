from .attention_pooling import AttentionPoolingHead

__all__ = ['AttentionPoolingHead']
