"""One loader behind every way mmengine reads a checkpoint.

mmengine's ``CheckpointLoader`` picks a loader by the path's prefix; every
loader of onedl-mmengine 0.10.12 (and mmengine 0.10.7) ends in ``torch.load``
(``_safe_torch_load``, which falls back to full unpickling, or, for URLs,
``torch.hub.load_state_dict_from_url``, which unpickles fully). Through
``CheckpointLoader.register_scheme(..., force=True)`` (its extension point)
every prefix mmengine knows is served here instead: the file is fetched the
way mmengine fetches it (a URL is downloaded into the hub cache,
``$TORCH_HOME/hub/checkpoints``; ``torchvision://``, ``modelzoo://``,
``open-mmlab://``, ``openmmlab://`` and ``mmcls://`` names resolve through
mmengine's model-zoo tables; ``s3://``/``petrel://`` through its file
backend; ``pavi://`` through pavi) and then parsed as data by
:func:`m3i_mm.engine.checkpoint.parser.parse_checkpoint`. Runner
``load_from`` / ``resume``, ``init_cfg=dict(type='Pretrained')``,
``tools/test.py``, the converters and ``FrozenImageTarget`` all arrive here.

``M3I_TRUST_CHECKPOINTS=1`` is the one way to unpickle a file the user
trusts (``torch.load(weights_only=False)``).
"""
import io
import os
import os.path as osp
import tempfile
from typing import Any, BinaryIO, Union
from urllib.parse import urlparse

import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.fileio import get_file_backend
from mmengine.runner import checkpoint as mm_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

from .parser import MapLocation, parse_checkpoint

# Environment variable that lets a user load a checkpoint they trust with
# full pickle. Never set by m3i_mm itself.
TRUST_ENV = 'M3I_TRUST_CHECKPOINTS'


def trusted() -> bool:
    """Whether the user asked for full unpickling (``M3I_TRUST_CHECKPOINTS=1``)."""
    return os.environ.get(TRUST_ENV, '0') == '1'


def load_checkpoint_file(source: Union[str, os.PathLike, bytes, BinaryIO],
                         map_location: MapLocation = None,
                         name: Union[str, None] = None) -> Any:
    """Parse a local checkpoint (or its bytes); full unpickling only when
    ``M3I_TRUST_CHECKPOINTS=1``.

    Args:
        source: A path, bytes or a seekable binary file.
        map_location: As :func:`torch.load`.
        name (str, optional): How errors name the file.

    Returns:
        The checkpoint, see :func:`parse_checkpoint`.

    Raises:
        FileNotFoundError: A path that is no file (a folder included).
        UnsafeCheckpointError: See :func:`parse_checkpoint`.
        NotACheckpointError: See :func:`parse_checkpoint`.
    """
    if isinstance(source, (str, os.PathLike)):
        path = osp.expanduser(os.fspath(source))
        if not osp.isfile(path):
            what = 'is a folder, not a checkpoint file' if osp.isdir(
                path) else 'can not be found'
            raise FileNotFoundError(f'Checkpoint {path} {what}.')
        source = path
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    if trusted():
        return torch.load(source, map_location=map_location,
                          weights_only=False)
    return parse_checkpoint(source, map_location, name)


def load_from_local(filename: str, map_location: MapLocation = None) -> Any:
    """mmengine's local scheme (prefix ``''``)."""
    return load_checkpoint_file(filename, map_location)


def download_to_hub_cache(url: str, model_dir: Union[str, None] = None,
                          progress: bool = False) -> str:
    """Where ``torch.hub.load_state_dict_from_url`` keeps ``url``
    (``<model_dir or hub dir/checkpoints>/<basename>``), downloaded first if
    absent: by local rank 0, the other ranks wait (as mmengine's
    ``load_from_http``).

    Returns:
        str: The local file.
    """
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    cached = osp.join(model_dir, osp.basename(urlparse(url).path))
    rank, world_size = get_dist_info()
    local_rank = int(os.environ.get('LOCAL_RANK', rank))
    if local_rank == 0 and not osp.isfile(cached):
        os.makedirs(model_dir, exist_ok=True)
        torch.hub.download_url_to_file(url, cached, None, progress=progress)
    if world_size > 1:
        barrier()
    return cached


def load_from_http(filename: str, map_location: MapLocation = None,
                   model_dir: Union[str, None] = None,
                   progress: bool = False) -> Any:
    """mmengine's ``http://``/``https://`` scheme: download, then parse."""
    cached = download_to_hub_cache(filename, model_dir, progress)
    return load_checkpoint_file(cached, map_location,
                                name=f'{cached} (downloaded from {filename})')


def load_from_torchvision(filename: str,
                          map_location: MapLocation = None) -> Any:
    """``torchvision://NAME`` and the deprecated ``modelzoo://NAME``."""
    name = filename.split('://', 1)[1]
    urls = mm_checkpoint.get_torchvision_models()
    if name not in urls:
        raise KeyError(f'{filename}: no torchvision model {name!r}')
    return load_from_http(urls[name], map_location)


def load_from_openmmlab(filename: str, map_location: MapLocation = None) -> Any:
    """``open-mmlab://NAME`` / ``openmmlab://NAME`` (mmengine's table of
    external models, deprecated names renamed)."""
    name = filename.split('://', 1)[1]
    name = mm_checkpoint.get_deprecated_model_names().get(name, name)
    urls = mm_checkpoint.get_external_models()
    if name not in urls:
        raise KeyError(f'{filename}: no OpenMMLab model {name!r}')
    url = urls[name]
    if url.startswith(('http://', 'https://')):
        return load_from_http(url, map_location)
    return load_checkpoint_file(
        osp.join(mm_checkpoint._get_mmengine_home(), url), map_location)


def load_from_mmcls(filename: str, map_location: MapLocation = None) -> Any:
    """``mmcls://NAME``: mmcls's model zoo, backbone keys renamed."""
    name = filename.split('://', 1)[1]
    urls = mm_checkpoint.get_mmcls_models()
    if name not in urls:
        raise KeyError(f'{filename}: no mmcls model {name!r}')
    return mm_checkpoint._process_mmcls_checkpoint(
        load_from_http(urls[name], map_location))


def load_from_ceph(filename: str, map_location: MapLocation = None,
                   backend: str = 'petrel') -> Any:
    """``s3://`` and ``petrel://`` through mmengine's file backend."""
    data = get_file_backend(filename, backend_args={'backend': backend}).get(
        filename)
    return load_checkpoint_file(data, map_location, name=filename)


def load_from_pavi(filename: str, map_location: MapLocation = None) -> Any:
    """``pavi://`` through pavi's model cloud."""
    try:
        from pavi import modelcloud
    except ImportError:
        raise ImportError('Please install pavi to load checkpoint from '
                          'modelcloud.') from None
    model = modelcloud.get(filename[len('pavi://'):])
    with tempfile.TemporaryDirectory() as folder:
        path = osp.join(folder, model.name)
        model.download(path)
        return load_checkpoint_file(path, map_location, name=filename)


# Every prefix onedl-mmengine 0.10.12 registers, with its replacement.
SCHEMES = {
    '': load_from_local,
    ('http://', 'https://'): load_from_http,
    ('modelzoo://', 'torchvision://'): load_from_torchvision,
    ('open-mmlab://', 'openmmlab://'): load_from_openmmlab,
    'mmcls://': load_from_mmcls,
    (r'(\S+\:)?s3://', r'(\S+\:)?petrel://'): load_from_ceph,
    'pavi://': load_from_pavi,
}


def register_checkpoint_schemes() -> None:
    """Serve every prefix of ``CheckpointLoader`` with the loaders above."""
    for prefixes, loader in SCHEMES.items():
        CheckpointLoader.register_scheme(prefixes, loader, force=True)
