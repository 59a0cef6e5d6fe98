"""A dataset with no samples fails naming where it looked.

mmengine 0.10.x (also onedl-mmengine 0.10.12) ``BaseDataset.full_init``
fails on an empty dataset with numpy's ``need at least one array to
concatenate`` (``_serialize_data``), or, unserialised, later in the sampler,
naming nothing. ``M3IRunner`` builds every loader's dataset with
:func:`build_dataset`, which names an empty one of any class; our datasets
also take :class:`NonEmptyMixin`, and a config run by another runner can
wrap an upstream dataset in :class:`NonEmptyDataset`.
"""
import contextlib
from inspect import isclass
from typing import Any, Iterator, Union

from mmdet.registry import DATASETS as MMDET_DATASETS
from mmengine.dataset import BaseDataset
from mmseg.registry import DATASETS as MMSEG_DATASETS

from m3i_mm.registry import DATASETS


def empty_dataset_error(dataset: BaseDataset) -> ValueError:
    """The error for ``dataset`` without samples, naming its annotation
    file, root, prefix, filter and indices."""
    return ValueError(
        f'{type(dataset).__name__} has no samples: ann_file='
        f'{dataset.ann_file!r}, data_root={dataset.data_root!r}, '
        f'data_prefix={dict(dataset.data_prefix)}, filter_cfg='
        f'{dataset.filter_cfg}, indices={dataset._indices}')


@contextlib.contextmanager
def raising_if_empty(dataset: BaseDataset) -> Iterator[None]:
    """Around ``dataset.full_init()``: raise :func:`empty_dataset_error`
    when it loads no samples, instead of its own error or none."""
    placeholder = dataset.data_list  # replaced once annotations are loaded
    try:
        yield
    except Exception as err:
        # Loaded, filtered and empty: serialisation failed, not loading.
        if dataset.data_list is placeholder or dataset.data_list:
            raise
        raise empty_dataset_error(dataset) from err
    if len(dataset) == 0:
        raise empty_dataset_error(dataset)


def build_dataset(cfg: dict) -> Any:
    """``DATASETS.build(cfg)`` in the current scope; a ``BaseDataset`` is
    loaded inside :func:`raising_if_empty`, so an empty one fails naming
    where it looked, whatever its class (``M3IRunner`` builds every loader's
    dataset with this)."""
    with DATASETS.switch_scope_and_registry(None) as registry:
        kind = cfg.get('type')
        if isinstance(kind, str):
            kind = registry.get(kind)
        if (not (isclass(kind) and issubclass(kind, BaseDataset))
                or cfg.get('lazy_init')):
            return registry.build(cfg)
        dataset = registry.build(dict(cfg, lazy_init=True))
    with raising_if_empty(dataset):
        dataset.full_init()
    return dataset


class NonEmptyMixin:
    """For a ``BaseDataset`` subclass: :meth:`full_init` raises
    :func:`empty_dataset_error` when the dataset has no samples."""

    def full_init(self) -> None:
        with raising_if_empty(self):
            super().full_init()


@DATASETS.register_module()
@MMDET_DATASETS.register_module()
@MMSEG_DATASETS.register_module()
class NonEmptyDataset:
    """Wrap any ``BaseDataset`` so that an empty one fails naming its
    annotation file, root, prefix and filter.

    Transparent otherwise: length, items, ``metainfo`` and every other
    attribute are the wrapped dataset's. In a config::

        dataset=dict(type='NonEmptyDataset',
                     dataset=dict(type='CocoDataset', ...))

    Args:
        dataset (BaseDataset | dict): The dataset or its config (built with
            ``lazy_init=True``; the wrapper loads it when built).
    """

    def __init__(self, dataset: Union[BaseDataset, dict]) -> None:
        if isinstance(dataset, dict):
            dataset = DATASETS.build(dict(dataset, lazy_init=True))
        if not isinstance(dataset, BaseDataset):
            raise TypeError('NonEmptyDataset wraps a BaseDataset or its '
                            f'config, got {type(dataset).__name__}')
        self.dataset = dataset
        self.full_init()

    def full_init(self) -> None:
        with raising_if_empty(self.dataset):
            self.dataset.full_init()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> Any:
        return self.dataset[idx]

    def __getattr__(self, name: str) -> Any:
        if name == 'dataset':  # not yet set (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return f'NonEmptyDataset({self.dataset!r})'
