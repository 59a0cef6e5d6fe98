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
        in_channels (int): Token size (Table 7 "attention pooling input").
        out_channels (int): Output embedding size.
        num_heads (int): Attention heads. Defaults to 16.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 num_heads: int = 16) -> None:
        super().__init__()
        if in_channels % num_heads:
            raise ValueError(f'in_channels {in_channels} must be divisible '
                             f'by num_heads {num_heads}')
        self.query = nn.Parameter(torch.zeros(1, 1, in_channels))
        self.norm_in = nn.LayerNorm(in_channels)
        self.attn = nn.MultiheadAttention(
            in_channels, num_heads, batch_first=True)
        self.norm_out = nn.LayerNorm(in_channels)
        self.proj = nn.Linear(in_channels, out_channels)

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
        x = self.norm_in(tokens)
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
