"""Image-text pairs: an annotation file, or tar shards in the WebDataset layout.

- :class:`ImageTextDataset` reads ``image path + caption`` from a ``.jsonl``
  (``{"image": ..., "caption": ...}`` per line) or ``.tsv``
  (``path<TAB>caption``) file; images are loaded by the pipeline as usual.
- :class:`ImageTextShards` streams ``.tar`` shards as LAION / CC12M / YFCC are
  distributed (WebDataset layout: the files of one sample are adjacent
  members sharing a key, e.g. ``000123.jpg`` + ``000123.txt``), without
  unpacking them. Shards are split over ranks and dataloader workers. A
  corrupt sample (undecodable image, missing or empty caption), adjacent
  samples sharing a key (two members with one name) or a truncated shard is
  skipped with a counted warning naming the shard and key, never a crash.

Both produce ``img`` (or ``img_path``) and ``caption`` for the pipeline.
"""
import glob
import io
import json
import os.path as osp
import re
import tarfile
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
from mmcv.transforms import Compose
from mmengine.dataset import BaseDataset
from mmengine.dist import get_dist_info
from torch.utils.data import IterableDataset, get_worker_info

from m3i_mm.registry import DATASETS
from m3i_mm.utils.randomness import derive_seed, seed_all
from .non_empty import NonEmptyMixin

IMAGE_EXTS = ('jpg', 'jpeg', 'png', 'webp', 'bmp')
TEXT_EXTS = ('txt', 'caption', 'json')


@DATASETS.register_module()
class ImageTextDataset(NonEmptyMixin, BaseDataset):
    """Image-caption pairs listed in an annotation file.

    A file with no pairs fails naming it (:class:`NonEmptyMixin`), a line
    that is malformed or whose caption is empty naming the line.

    Args:
        ann_file (str): ``.jsonl`` with ``image`` and ``caption`` keys, or
            ``.tsv`` with ``path<TAB>caption`` lines.
        data_root (str): Root of ``ann_file`` and the images.
        data_prefix (str | dict): Image folder, relative to ``data_root``.
        **kwargs: Passed to :class:`mmengine.dataset.BaseDataset`.
    """

    def __init__(self,
                 ann_file: str,
                 data_root: str = '',
                 data_prefix: Union[str, dict] = '',
                 **kwargs) -> None:
        if isinstance(data_prefix, str):
            data_prefix = dict(img_path=data_prefix)
        super().__init__(
            ann_file=ann_file,
            data_root=data_root,
            data_prefix=data_prefix,
            **kwargs)

    def load_data_list(self) -> List[dict]:
        """One ``dict(img_path, caption)`` per annotated pair."""
        prefix = self.data_prefix.get('img_path', '')
        data_list = []
        with open(self.ann_file, encoding='utf-8') as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                path, caption = self._parse(line, line_no)
                if not str(caption).strip():
                    raise ValueError(
                        f'{self.ann_file}, line {line_no}: empty caption')
                data_list.append(
                    dict(img_path=osp.join(prefix, path), caption=caption))
        return data_list

    def _parse(self, line: str, line_no: int):
        where = f'{self.ann_file}, line {line_no}'
        if self.ann_file.endswith('.jsonl'):
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f'{where}: not JSON ({err})') from None
            missing = [k for k in ('image', 'caption') if k not in item]
            if missing:
                raise KeyError(f'{where}: missing key(s) {missing}')
            return item['image'], item['caption']
        if self.ann_file.endswith('.tsv'):
            parts = line.rstrip('\n').split('\t', 1)
            if len(parts) != 2:
                raise ValueError(f'{where}: expected "path<TAB>caption"')
            return parts[0], parts[1]
        raise ValueError(f'{self.ann_file}: annotation files must be .jsonl '
                         'or .tsv')


def expand_shards(shards: Union[str, Sequence[str]],
                  data_root: str = '') -> List[str]:
    """Shard paths from globs and WebDataset brace ranges.

    ``'laion/{00000..00002}.tar'`` -> three paths; ``'cc12m/*.tar'`` -> the
    sorted matches.

    Args:
        shards (str | Sequence[str]): Patterns.
        data_root (str): Prefix of relative patterns.

    Returns:
        list[str]: Paths, in order.
    """
    patterns = [shards] if isinstance(shards, str) else list(shards)
    paths = []
    for pattern in patterns:
        pattern = osp.join(data_root, pattern)
        match = re.search(r'\{(\d+)\.\.(\d+)\}', pattern)
        if match:
            first, last = match.group(1), match.group(2)
            for i in range(int(first), int(last) + 1):
                paths.append(pattern[:match.start()] + str(i).zfill(
                    len(first)) + pattern[match.end():])
        elif any(c in pattern for c in '*?['):
            found = sorted(glob.glob(pattern))
            if not found:
                raise FileNotFoundError(f'no shard matches {pattern}')
            paths.extend(found)
        else:
            paths.append(pattern)
    return paths


class _EndCheckedTarInfo(tarfile.TarInfo):
    """Member header that fails on a short read.

    ``tarfile`` (CPython 3.8-3.13, ``TarFile.next``) ends the archive
    silently when the file stops at, or inside, a member header; a complete
    archive ends with a zero block instead. A shard cut at a header would
    lose its remaining samples without a trace.
    """

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        if len(buf) != tarfile.BLOCKSIZE:
            raise tarfile.ReadError(
                f'truncated: {len(buf)} of {tarfile.BLOCKSIZE} bytes of a '
                'member header, no end-of-archive block')
        return super().frombuf(buf, encoding, errors)


def nominal_length(dataset: object, length: Optional[int]) -> int:
    """Samples per epoch of one rank for a streamed dataset's ``__len__``.

    mmengine's Runner takes ``len(train_dataloader)`` (scheduler
    ``epoch_length``, LoggerHook, LogProcessor), which for an
    ``IterableDataset`` is ``len(dataset)``; like WebDataset's
    ``with_length``, the stream states a nominal epoch size.

    Args:
        dataset (object): The dataset (named in the error).
        length (int, optional): Samples per epoch over all ranks.

    Returns:
        int: ``length // world_size``.

    Raises:
        TypeError: ``length`` is None (as ``len()`` of an unsized object).
    """
    if length is None:
        raise TypeError(
            f'{dataset!r} has no length: mmengine\'s Runner needs '
            f'len(train_dataloader). Set `length` (samples per epoch over '
            f'all ranks) in its dataset config.')
    return length // get_dist_info()[1]


def check_length(length: Optional[int]) -> Optional[int]:
    """``length`` as a positive int (or None); ValueError otherwise."""
    if length is None:
        return None
    if isinstance(length, bool) or not isinstance(length, int) or \
            length <= 0:
        raise ValueError(f'length must be a positive int (samples per '
                         f'epoch), got {length!r}')
    return length


def worker_slot() -> tuple:
    """(global index, number) of the data-loading workers over all ranks:
    this process's slot for splitting a stream."""
    rank, world_size = get_dist_info()
    worker = get_worker_info()
    num_workers, worker_id = (1, 0) if worker is None else (
        worker.num_workers, worker.id)
    return rank * num_workers + worker_id, world_size * num_workers


@DATASETS.register_module()
class ImageTextShards(IterableDataset):
    """Stream image-caption pairs from WebDataset-style tar shards.

    Each worker of each rank reads its own shards (shard ``i`` of the pass's
    order goes to global worker ``i % (world_size * num_workers)``),
    sequentially and without unpacking. Use it with ``sampler=None`` in the
    dataloader config.

    Pass ``e`` reads the shards in the order ``permutation(seed, e)``, and the
    ``k``-th sample a worker yields in it goes through the pipeline with the
    global generators seeded from ``(seed, e, worker slot, k)``, so a pass is
    a pure function of its epoch. Dataloader workers iterate a copy of the
    dataset, so the epoch is set in the main process with :meth:`set_epoch`
    before each pass (m3i_mm's ``ResumableRandomnessHook`` does it under the
    Runner, from the loop's counters, which checkpoints hold); iterating in
    the main process (``num_workers=0``) or in persistent workers also
    advances it by one per pass.

    Args:
        shards (str | Sequence[str]): Shard paths, globs or brace ranges
            (``'{00000..00099}.tar'``).
        data_root (str): Prefix of relative shard paths.
        pipeline (Sequence[dict]): Transforms applied to
            ``dict(img, caption, img_path)``.
        shuffle_shards (bool): Shuffle the shard order each pass.
        seed (int): Seed of the shard shuffle.
        max_warnings (int): Skipped samples warned about one by one; later
            ones are only counted.
        length (int, optional): Samples in the shards, over all ranks
            (nominal: a pass yields what the shards hold). ``len()`` is
            ``length // world_size``, the samples of one rank per pass; the
            Runner needs it. Without it ``len()`` raises ``TypeError``.
    """

    def __init__(self,
                 shards: Union[str, Sequence[str]],
                 data_root: str = '',
                 pipeline: Sequence[dict] = (),
                 shuffle_shards: bool = True,
                 seed: int = 0,
                 max_warnings: int = 10,
                 length: Optional[int] = None) -> None:
        super().__init__()
        self.length = check_length(length)
        self.shards = expand_shards(shards, data_root)
        if not self.shards:
            raise ValueError(f'ImageTextShards: no shard in {shards!r} '
                             f'(data_root={data_root!r})')
        missing = [p for p in self.shards if not osp.isfile(p)]
        if missing:
            raise FileNotFoundError(f'missing shard(s): {missing[:5]}')
        self.pipeline = Compose(list(pipeline))
        self.shuffle_shards = shuffle_shards
        self.seed = seed
        self.max_warnings = max_warnings
        self.num_skipped = 0
        self.epoch = 0

    def __repr__(self) -> str:
        return (f'ImageTextShards({self.shards[0]!r}, ... '
                f'{len(self.shards)} shards)')

    def __len__(self) -> int:
        """Nominal samples of one rank per pass (``length // world_size``)."""
        return nominal_length(self, self.length)

    def set_epoch(self, epoch: int) -> None:
        """Set the pass that the next iteration reads (shard order, seeds)."""
        self.epoch = int(epoch)

    def _my_shards(self, slot: int, num_slots: int) -> List[str]:
        order = list(self.shards)
        if self.shuffle_shards:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = [order[i] for i in rng.permutation(len(order))]
        return order[slot::num_slots]

    def _skip(self, what: str) -> None:
        self.num_skipped += 1
        if self.num_skipped <= self.max_warnings:
            warnings.warn(f'ImageTextShards: skipped {what} '
                          f'({self.num_skipped} skipped so far)')

    def __iter__(self) -> Iterator[dict]:
        slot, num_slots = worker_slot()
        epoch, position = self.epoch, 0
        shards = self._my_shards(slot, num_slots)
        self.epoch += 1
        for shard in shards:
            for key, files in self._samples(shard):
                sample = self._decode(shard, key, files)
                if sample is None:
                    continue
                seed_all(derive_seed(self.seed, epoch, slot, position))
                position += 1
                out = self.pipeline(sample)
                if out is not None:
                    yield out

    def _samples(self, shard: str) -> Iterator[tuple]:
        """(key, {extension: bytes}) of each sample, in stream order."""
        key, files, repeated = None, {}, None
        try:
            with tarfile.open(
                    shard, mode='r|*', tarinfo=_EndCheckedTarInfo) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    name = osp.basename(member.name)
                    stem, _, ext = name.partition('.')
                    member_key = osp.join(osp.dirname(member.name), stem)
                    if member_key != key and files:
                        yield from self._unless_repeated(
                            shard, key, files, repeated)
                        files, repeated = {}, None
                    key = member_key
                    # Adjacent samples with one key: which image goes with
                    # which caption is unknown, so the group is skipped.
                    if ext.lower() in files:
                        repeated = repeated or osp.basename(member.name)
                    files[ext.lower()] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as err:
            self._skip(f'the rest of shard {shard} after sample {key} '
                       f'(unreadable: {err})')
        if files:  # its members were read whole
            yield from self._unless_repeated(shard, key, files, repeated)

    def _unless_repeated(self, shard: str, key: str, files: Dict[str, bytes],
                         repeated: Optional[str]) -> Iterator[tuple]:
        """``(key, files)``, or a counted skip when a member name came
        twice (``repeated``)."""
        if repeated is None:
            yield key, files
        else:
            self._skip(f'sample {key} of {shard}: duplicate key, member '
                       f'{repeated} more than once (adjacent samples share '
                       'the key)')

    def _decode(self, shard: str, key: str,
                files: Dict[str, bytes]) -> Optional[dict]:
        import mmcv
        image = next((files[e] for e in IMAGE_EXTS if e in files), None)
        text = next((e for e in TEXT_EXTS if e in files), None)
        where = f'sample {key} of {shard}'
        if image is None or text is None:
            self._skip(f'{where}: needs an image and a caption, has '
                       f'{sorted(files)}')
            return None
        try:
            img = mmcv.imfrombytes(image, flag='color')
            if img is None:
                raise ValueError('undecodable image')
            caption = files[text].decode('utf-8').strip()
            if text == 'json':
                caption = json.loads(caption)['caption']
            if not str(caption).strip():
                raise ValueError('empty caption')
        except Exception as err:  # any corrupt member: skip, never crash
            self._skip(f'{where}: {err}')
            return None
        return dict(
            img=img,
            img_shape=img.shape[:2],
            ori_shape=img.shape[:2],
            caption=caption,
            img_path=f'{shard}:{key}')


def write_shard(path: str, samples: Sequence[tuple]) -> None:
    """Write ``(key, {ext: bytes})`` samples as a WebDataset tar shard."""
    with tarfile.open(path, 'w') as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f'{key}.{ext}')
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


__all__ = [
    'ImageTextDataset', 'ImageTextShards', 'expand_shards', 'write_shard',
    'nominal_length'
]
