"""Input-to-target decoder f_ψ for dense image targets."""
import torch
import torch.nn as nn

from m3i_mm.registry import MODELS
from ..utils.view_geometry import sincos_pos_embed


@MODELS.register_module()
class ImageTargetDecoder(nn.Module):
    """Transformer that predicts target-view features from input tokens.

    The sequence is the image's own encoder tokens (projected, plus the
    sine-cosine embedding of their input-view positions) followed by one
    mask token per target patch to predict, carrying the embedding of that
    patch's centre mapped into input-view coordinates (see
    :func:`m3i_mm.models.utils.target_positions_in_input`). Predictions are
    read from the mask tokens.

    Args:
        in_channels (int): Encoder token size.
        out_channels (int): Target feature size.
        embed_dims (int): Decoder width. Defaults to 768 (ViT-B, Table 7).
        depth (int): Transformer layers. Defaults to 4.
        num_heads (int): Attention heads. Defaults to 16.
        mlp_ratio (float): FFN hidden size / width. Defaults to 4.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 embed_dims: int = 768,
                 depth: int = 4,
                 num_heads: int = 16,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if embed_dims % num_heads or embed_dims % 4:
            raise ValueError(f'embed_dims {embed_dims} must be divisible by '
                             f'num_heads {num_heads} and by 4')
        self.embed_dims = embed_dims
        self.input_proj = nn.Linear(in_channels, embed_dims)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
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

    def forward(self, tokens: torch.Tensor, token_pos: torch.Tensor,
                query_pos: torch.Tensor) -> torch.Tensor:
        """Predict the target features at ``query_pos``.

        Args:
            tokens (Tensor): (N, Lc, in_channels) the image's encoder tokens.
            token_pos (Tensor): (N, Lc, 2) their input-view positions (x, y)
                in patch units.
            query_pos (Tensor): (N, Lq, 2) positions of the target patches
                in the same coordinates.

        Returns:
            Tensor: (N, Lq, out_channels) predictions.
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
        queries = self.mask_token.to(dtype) + sincos_pos_embed(
            query_pos, self.embed_dims).to(dtype)
        x = self.layers(torch.cat([context, queries], dim=1))
        return self.predictor(self.norm(x[:, num_tokens:]))
