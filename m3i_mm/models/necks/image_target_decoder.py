"""Input-to-target decoder f_ψ for dense image targets."""
from typing import Optional

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp

from m3i_mm.registry import MODELS
from ..utils.view_geometry import relative_query_embed, sincos_pos_embed


@MODELS.register_module()
class ImageTargetDecoder(nn.Module):
    """Transformer that predicts target-view features from input tokens.

    The sequence is the image's own encoder tokens (projected, plus the
    sine-cosine embedding of their input-view positions) followed by one
    mask token per target patch to predict, carrying the embedding of that
    patch's centre mapped into input-view coordinates (see
    :func:`m3i_mm.models.utils.target_positions_in_input`). Predictions are
    read from the mask tokens.

    With ``relative_scale`` (SiameseIM [67], its ``decoder_pos_mlp``), a
    query's embedding is a learned linear map of the sine-cosine features of
    its position and of the log size ratio of a target patch to an input
    patch (:func:`m3i_mm.models.utils.relative_query_embed`); without it, the
    sine-cosine embedding of the position alone. The input tokens carry the
    sine-cosine embedding of their positions either way, as in [67].

    Args:
        in_channels (int): Encoder token size.
        out_channels (int): Target feature size.
        embed_dims (int): Decoder width. Defaults to 768 (ViT-B, Table 7).
        depth (int): Transformer layers. Defaults to 4.
        num_heads (int): Attention heads. Defaults to 16.
        mlp_ratio (float): FFN hidden size / width. Defaults to 4.
        relative_scale (bool): Embed the relative scale of target to input
            patches with a learned map, as SiameseIM does. Defaults to True.
        scale_factor (float): Multiplier of the log size ratios before their
            sine-cosine features (10 in [67]). Defaults to 10.
        with_cp (bool): Activation checkpointing of every layer in training
            (``torch.utils.checkpoint``, ``use_reentrant=False``): its
            activations are recomputed in the backward pass. Defaults to
            False.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 embed_dims: int = 768,
                 depth: int = 4,
                 num_heads: int = 16,
                 mlp_ratio: float = 4.0,
                 relative_scale: bool = True,
                 scale_factor: float = 10.,
                 with_cp: bool = False) -> None:
        super().__init__()
        if embed_dims % num_heads or embed_dims % 4:
            raise ValueError(f'embed_dims {embed_dims} must be divisible by '
                             f'num_heads {num_heads} and by 4')
        self.embed_dims = embed_dims
        self.input_proj = nn.Linear(in_channels, embed_dims)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.scale_factor = scale_factor
        self.with_cp = with_cp
        self.query_embed = nn.Linear(2 * embed_dims, embed_dims) \
            if relative_scale else None
        layer = nn.TransformerEncoderLayer(
            embed_dims,
            num_heads,
            dim_feedforward=int(embed_dims * mlp_ratio),
            dropout=0.0,
            activation='gelu',
            batch_first=True,
            norm_first=True)
        self.layers = nn.TransformerEncoder(
            layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dims)
        self.predictor = nn.Linear(embed_dims, out_channels)
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self,
                tokens: torch.Tensor,
                token_pos: torch.Tensor,
                query_pos: torch.Tensor,
                query_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predict the target features at ``query_pos``.

        Args:
            tokens (Tensor): (N, Lc, in_channels) the image's encoder tokens.
            token_pos (Tensor): (N, Lc, 2) their input-view positions (x, y)
                in patch units.
            query_pos (Tensor): (N, Lq, 2) positions of the target patches
                in the same coordinates.
            query_scale (Tensor, optional): (N, 2) log width and height
                ratios of a target patch to an input patch
                (:func:`m3i_mm.models.utils.target_scale_in_input`); needed
                with ``relative_scale``, ignored without.

        Returns:
            Tensor: (N, Lq, out_channels) predictions.

        Raises:
            ValueError: On position shapes that do not match the tokens, or
                a missing ``query_scale`` with ``relative_scale``.
        """
        n, num_tokens = tokens.shape[:2]
        if token_pos.shape != (n, num_tokens, 2) or query_pos.dim() != 3:
            raise ValueError(
                f'positions do not match tokens {tuple(tokens.shape)}: '
                f'token_pos {tuple(token_pos.shape)}, query_pos '
                f'{tuple(query_pos.shape)}')
        dtype = tokens.dtype
        context = self.input_proj(tokens) + sincos_pos_embed(
            token_pos, self.embed_dims).to(dtype)
        if self.query_embed is None:
            query_embed = sincos_pos_embed(query_pos, self.embed_dims)
        elif query_scale is None:
            raise ValueError('ImageTargetDecoder(relative_scale=True) needs '
                             'query_scale, the (N, 2) log size ratios')
        else:
            query_embed = self.query_embed(
                relative_query_embed(query_pos, query_scale, self.embed_dims,
                                     self.scale_factor).to(dtype))
        queries = self.mask_token.to(dtype) + query_embed.to(dtype)
        x = torch.cat([context, queries], dim=1)
        if self.with_cp and self.training and x.requires_grad:
            for layer in self.layers.layers:
                x = cp.checkpoint(layer, x, use_reentrant=False)
        else:
            x = self.layers(x)
        return self.predictor(self.norm(x[:, num_tokens:]))
