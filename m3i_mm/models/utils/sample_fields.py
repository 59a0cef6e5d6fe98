"""The per-sample values ``M3I.loss`` reads, made uniform on the host.

Under ``torch.compile`` a Python value read from a data sample is a guard:
which samples have a label or a caption, or a count read from a mask,
would either break the graph (a host read of a device tensor) or recompile
it whenever a new batch differs (issue 19). The data preprocessor
(:class:`~m3i_mm.models.utils.M3IDataPreprocessor`) therefore gives every
training sample of a batch the same fields
(:func:`prepare_training_samples`):

- metainfo ``num_masked`` (int, :func:`num_masked`): the mask's number of
  masked patches, the same for the whole batch (the shape of M3I's token
  split);
- ``has_label``, ``label_index``, ``has_caption`` and, with the model's
  tokenizer, ``caption_tokens``: rows of the tensors of
  :func:`batch_targets`.

``M3I.loss`` reads them back with :func:`read_batch_targets`, which also
serves samples another preprocessor made.
"""
from typing import Callable, Dict, List, Optional

import torch

Tokenizer = Callable[[List[str]], Dict[str, torch.Tensor]]


def _where(sample) -> str:
    return sample.get('img_path', '(no img_path)')


def num_masked(data_samples: list, required: bool = True) -> Optional[int]:
    """The number of masked patches every ``mask`` of the batch has.

    Args:
        data_samples (list[DataSample]): Samples with a ``mask`` (h, w) each
            (arrays, or tensors: one host read of their counts wherever
            they are), or without masks.
        required (bool): Raise when the counts differ; else return ``None``
            (M3I's ``'full'`` mode ignores the masks).

    Returns:
        int | None: The count; ``None`` when the samples carry no mask.

    Raises:
        ValueError: With ``required``, the masks hide different numbers of
            patches (M3I gathers each image's tokens into fixed-size
            tensors), naming two samples.
    """
    masks = [s.get('mask') for s in data_samples]
    if not masks or any(m is None for m in masks):
        return None
    counts = torch.stack(masks).flatten(1).sum(1).tolist() if all(
        isinstance(m, torch.Tensor) for m in masks) else [
            int(m.sum()) for m in masks]
    for sample, count in zip(data_samples, counts):
        if count != counts[0]:
            if not required:
                return None
            raise ValueError(
                'all masks in a batch must mask the same number of patches: '
                f'{counts[0]} in {_where(data_samples[0])}, {count} in '
                f'{_where(sample)} (use BlockwiseMaskGenerator, which masks '
                'exactly round(mask_ratio * L) patches)')
    return counts[0]


def _label(sample) -> Optional[int]:
    """The sample's class index, or ``None``.

    Raises:
        ValueError: A label that is not an integer, naming the sample
            (``int()`` would truncate it).
    """
    label = sample.get('gt_label')
    if label is None or len(label) == 0:
        return None
    value = torch.as_tensor(label[0], device='cpu')
    if value.is_floating_point() or value.is_complex():
        raise ValueError(f'label {value.item()} of sample {_where(sample)} '
                         'is not an integer')
    return int(value)


def batch_targets(data_samples: list,
                  device: torch.device,
                  tokenize: Optional[Tokenizer] = None) -> Dict[str, object]:
    """The batch's label and caption tensors, from each sample's
    ``gt_label`` and ``caption`` (one host-to-device copy per field).

    Args:
        data_samples (list[DataSample]): The batch (N samples).
        device (torch.device): Where the tensors go.
        tokenize (callable, optional): Captions -> dict of (N, T) tensors,
            e.g. ``TextTargetEncoder.tokenize``.

    Returns:
        dict: ``has_label`` (N,) bool, ``label_index`` (N,) long (0 where
        absent), ``has_caption`` (N,) bool and, with ``tokenize``,
        ``caption_tokens`` (dict of (N, T) tensors; ``''`` for a missing
        caption).

    Raises:
        ValueError: A non-integer label (see :func:`_label`).
    """
    labels = [_label(s) for s in data_samples]
    captions = [s.get('caption') for s in data_samples]
    # Built on the host (never torch's default device), moved once.
    host = torch.device('cpu')
    targets = {
        'has_label':
        torch.tensor([v is not None for v in labels], device=host),
        'label_index':
        torch.tensor([0 if v is None else int(v) for v in labels],
                     dtype=torch.long, device=host),
        'has_caption':
        torch.tensor([c is not None for c in captions], device=host),
    }
    targets = {k: v.to(device) for k, v in targets.items()}
    if tokenize is not None:
        targets['caption_tokens'] = tokenize([c or '' for c in captions])
    return targets


def prepare_training_samples(data_samples: list,
                             device: torch.device,
                             masked: Optional[int],
                             tokenize: Optional[Tokenizer] = None) -> None:
    """Give every sample its row of :func:`batch_targets` as fields of the
    same names and the metainfo ``num_masked``.

    Args:
        data_samples (list[DataSample]): The batch; changed in place.
        device (torch.device): Where the label and caption flags go (the
            caption tokens are on the tokenizer's device).
        masked (int, optional): :func:`num_masked`, read before the masks
            moved to the device; ``None`` sets no ``num_masked`` (masks of
            different counts: the loss then reads them itself).
        tokenize (callable, optional): As :func:`batch_targets`.

    Raises:
        ValueError: A non-integer label (see :func:`_label`).
    """
    targets = batch_targets(data_samples, device, tokenize)
    for i, sample in enumerate(data_samples):
        for name, value in targets.items():
            if isinstance(value, dict):
                rows = {k: v[i] for k, v in value.items()}
                for row in rows.values():
                    # The batch's longest caption sets the length: a dynamic
                    # size under compile from the first batch on.
                    torch._dynamo.maybe_mark_dynamic(row, 0)
                sample.set_field(rows, name)
            else:
                sample.set_field(value[i], name)
        if masked is not None:
            sample.set_metainfo(dict(num_masked=masked))


def read_batch_targets(data_samples: list,
                       device: torch.device,
                       tokenize: Optional[Tokenizer] = None
                       ) -> Dict[str, object]:
    """:func:`batch_targets`, stacked from the fields
    :func:`prepare_training_samples` gave the samples, or computed now for
    samples without them (e.g. from another data preprocessor: host reads that
    ``torch.compile`` cannot keep in one graph).

    Only these fields are read, never ``gt_label`` or ``caption``, so that
    under compile which samples have a label or a caption is never guarded
    (a guard on it recompiled the loss for every multi-source batch): an
    edit of a sample's label or caption after the preprocessor is not seen.

    Args / Returns / Raises: as :func:`batch_targets`.
    """
    needed = ['has_label'] + (['caption_tokens'] if tokenize else [])
    if any(s.get(n) is None for s in data_samples for n in needed):
        return batch_targets(data_samples, device, tokenize)
    targets = {
        n: torch.stack([s.get(n) for s in data_samples])
        for n in ('has_label', 'label_index', 'has_caption')
    }
    if tokenize is not None:
        targets['caption_tokens'] = {
            k: torch.stack([s.caption_tokens[k] for s in data_samples])
            for k in data_samples[0].caption_tokens
        }
    return targets
