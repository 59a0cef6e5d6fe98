"""Attention pooling f_ψ for global targets (category or text embedding)."""
from typing import Optional

import torch
import torch.nn as nn

from m3i_mm.registry import MODELS


@MODELS.register_module()
class AttentionPoolingHead(nn.Module):
    """Pool a set of tokens into one vector, then project it.

    A query pooled from the tokens (their mean plus a learned offset)
    cross-attends to the tokens; the result is normalised and linearly
    projected to the target embedding size. In a mixed input each image pools
    over its own tokens only (pass just those tokens).

    Args:
        in_channels (int): Token size of the backbone.
        out_channels (int): Output embedding size (Table 7 "attention pooling
            output").
        num_heads (int): Attention heads. Defaults to 16.
        embed_dims (int, optional): Width of the pooling (Table 7 "attention
            pooling input"); tokens are linearly projected to it when it
            differs from ``in_channels``. Defaults to ``in_channels``.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 num_heads: int = 16,
                 embed_dims: Optional[int] = None) -> None:
        super().__init__()
        embed_dims = embed_dims or in_channels
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims {embed_dims} must be divisible by '
                             f'num_heads {num_heads}')
        self.input_proj = nn.Linear(in_channels, embed_dims) \
            if embed_dims != in_channels else nn.Identity()
        self.query = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.norm_in = nn.LayerNorm(embed_dims)
        self.attn = nn.MultiheadAttention(
            embed_dims, num_heads, batch_first=True)
        self.norm_out = nn.LayerNorm(embed_dims)
        self.proj = nn.Linear(embed_dims, out_channels)

    def forward(self,
                tokens: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """(N, L, C) tokens -> (N, out_channels) embedding.

        Args:
            tokens (Tensor): (N, L, C).
            key_padding_mask (Tensor, optional): (N, L) bool, True = ignore.

        Returns:
            Tensor: (N, out_channels).
        """
        if tokens.dim() != 3:
            raise ValueError(f'tokens must be (N, L, C), got '
                             f'{tuple(tokens.shape)}')
        x = self.norm_in(self.input_proj(tokens))
        if key_padding_mask is None:
            pooled = x.mean(dim=1, keepdim=True)
        else:
            keep = (~key_padding_mask).unsqueeze(-1).to(x.dtype)
            pooled = (x * keep).sum(1, keepdim=True) / keep.sum(
                1, keepdim=True).clamp(min=1)
        out, _ = self.attn(
            pooled + self.query,
            x,
            x,
            key_padding_mask=key_padding_mask,
            need_weights=False)
        return self.proj(self.norm_out(out.squeeze(1)))
