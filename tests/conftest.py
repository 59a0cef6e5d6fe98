import os
import os.path as osp
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import m3i_mm  # noqa: E402,F401  (compat + registration, as configs do)


@pytest.fixture(scope='session')
def demo_root(tmp_path_factory):
    """The demo digits materialised once per test session."""
    from m3i_mm.datasets import materialize_demo_digits
    return materialize_demo_digits(
        str(tmp_path_factory.mktemp('data') / 'demo_digits'))


def config_path(*parts: str) -> str:
    return osp.join(REPO, 'configs', *parts)


def load_script(*parts: str):
    """Import a script of the repository (tools/, benchmarks/) by path."""
    import importlib.util
    path = osp.join(REPO, *parts)
    name = osp.splitext(osp.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def mmpretrain_default_scope():
    """Every test starts in mmpretrain's scope: a Runner of an mmdet/mmseg
    config leaves its own scope as the current one behind."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        yield
