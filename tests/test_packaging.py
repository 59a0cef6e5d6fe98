"""`pip install` ships configs and tools; `mim train m3i_mm CONFIG` runs."""
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO
from m3i_mm import __version__


def demo_options(demo_root):
    """--cfg-options for two training steps of a demo config."""
    return [
        f'train_dataloader.dataset.data_root={demo_root}',
        f'val_dataloader.dataset.data_root={demo_root}',
        'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'val_dataloader.persistent_workers=False',
        'train_dataloader.batch_size=8', 'train_cfg.max_iters=2',
        'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2'
    ]


def pip(*args, **kwargs):
    return subprocess.run([sys.executable, '-m', 'pip', *args],
                          capture_output=True, text=True, **kwargs)


def copy_checkout(parent: Path) -> Path:
    """This checkout's sources (no git, data, builds) under ``parent``."""
    src = parent / 'm3i_mm_repo'
    shutil.copytree(
        REPO, src,
        ignore=shutil.ignore_patterns('.git', 'data', 'work_dirs', 'build',
                                      '*.egg-info', '__pycache__', '.mim'))
    return src


@pytest.fixture
def repo_copy(tmp_path_factory):
    return copy_checkout(tmp_path_factory.mktemp('src'))


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    """The wheel of a copy of this checkout, built once for the module."""
    src = copy_checkout(tmp_path_factory.mktemp('wheel_src'))
    dist = tmp_path_factory.mktemp('dist')
    res = pip('wheel', '--no-deps', '--no-build-isolation', '-q', '-w',
              str(dist), str(src))
    assert res.returncode == 0, res.stderr[-3000:]
    found, = dist.glob('m3i_mm-*.whl')
    return found


def test_wheel_ships_configs_and_tools(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ('m3i_mm/.mim/configs/pretrain/m3i_vitb.py',
                 'm3i_mm/.mim/configs/_base_/default_runtime.py',
                 'm3i_mm/.mim/configs/demo/vit-tiny_sup_demo.py',
                 'm3i_mm/.mim/tools/train.py', 'm3i_mm/.mim/tools/test.py',
                 'm3i_mm/.mim/tools/dist_train.sh', 'm3i_mm/compat.py'):
        assert path in names, path


def test_mim_train_after_editable_install(repo_copy, demo_root, tmp_path):
    site = tmp_path / 'site'
    res = pip('install', '--no-deps', '--no-build-isolation', '-q',
              '--target', str(site), '-e', str(repo_copy))
    assert res.returncode == 0, res.stderr[-3000:]
    # Make the folder act as a site directory (process the editable .pth).
    (site / 'sitecustomize.py').write_text(
        'import os, site\nsite.addsitedir(os.path.dirname(__file__))\n')
    work = tmp_path / 'work'
    res = subprocess.run(
        [
            osp.join(osp.dirname(sys.executable), 'mim'), 'train', 'm3i_mm',
            'vit-tiny_sup_demo.py', '--work-dir',
            str(work), '--cfg-options', *demo_options(demo_root)
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(site)))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    # mim found the config by name inside the installed package.
    assert str(repo_copy / 'configs' / 'demo' / 'vit-tiny_sup_demo.py') in out
    assert (work / 'iter_2.pth').is_file()


def layered_venv(path) -> str:
    """A fresh venv that sees the current environment's packages.

    The current site-packages is added through a ``.pth`` file, so pip in the
    new venv resolves against every installed package but installs into (and
    could only remove from) the new venv.

    Returns:
        tuple: Its python and its site-packages folder.
    """
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(path)],
                   check=True)
    python = str(path / 'bin' / 'python')
    site = subprocess.run(
        [python, '-c', 'import sysconfig; print(sysconfig.get_paths()'
         '["purelib"])'], capture_output=True, text=True, check=True)
    site = site.stdout.strip()
    with open(osp.join(site, 'cached_env.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')
    return python, site


def test_wheel_installs_into_the_environment_unchanged(wheel, demo_root,
                                                       tmp_path):
    python, site = layered_venv(tmp_path / 'venv')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    # --no-index: every requirement of the wheel and of its OneDL and demo
    # extras must already be satisfied; nothing may be downloaded or changed.
    res = subprocess.run(
        [python, '-m', 'pip', 'install', '--no-index',
         f'{wheel}[onedl,demo,tests]'],
        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    installed = re.findall(r'Successfully installed (.*)', res.stdout)
    assert installed and installed[-1].split() == [f'm3i-mm-{__version__}'], \
        res.stdout
    meta = subprocess.run(
        [python, '-c', 'import importlib.metadata as m; '
         'print("\\n".join(m.requires("m3i_mm")))'],
        capture_output=True, text=True, env=env, check=True).stdout
    for requirement in ('torch>=2.0', 'onedl-mmdetection<3.6,>=3.5.1; '
                        'extra == "onedl"', 'mmdet<3.4,>=3.3.0; '
                        'extra == "upstream"'):
        assert requirement in meta, meta

    # The installed package, not this checkout, trains a packaged config
    # (mim cannot find a non-editable install: see README, "Usage").
    pkg = osp.join(site, 'm3i_mm')
    work = tmp_path / 'work'
    res = subprocess.run(
        [python, osp.join(pkg, '.mim', 'tools', 'train.py'),
         osp.join(pkg, '.mim', 'configs', 'demo', 'vit-tiny_sup_demo.py'),
         '--work-dir', str(work), '--cfg-options', *demo_options(demo_root),
         'train_cfg.val_interval=100'],
        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert (work / 'iter_2.pth').is_file()
