"""`pip install` ships configs and tools; `mim train m3i_mm CONFIG` runs."""
import os
import os.path as osp
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


def pip(*args, **kwargs):
    return subprocess.run([sys.executable, '-m', 'pip', *args],
                          capture_output=True, text=True, **kwargs)


@pytest.fixture
def repo_copy(tmp_path_factory):
    src = tmp_path_factory.mktemp('src') / 'm3i_mm_repo'
    shutil.copytree(
        REPO, src,
        ignore=shutil.ignore_patterns('.git', 'data', 'work_dirs', 'build',
                                      '*.egg-info', '__pycache__', '.mim'))
    return src


def test_wheel_ships_configs_and_tools(repo_copy, tmp_path):
    res = pip('wheel', '--no-deps', '--no-build-isolation', '-q', '-w',
              str(tmp_path), str(repo_copy))
    assert res.returncode == 0, res.stderr[-3000:]
    wheel, = tmp_path.glob('m3i_mm-*.whl')
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
            str(work), '--cfg-options',
            f'train_dataloader.dataset.data_root={demo_root}',
            f'val_dataloader.dataset.data_root={demo_root}',
            'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False',
            'val_dataloader.persistent_workers=False',
            'train_dataloader.batch_size=8', 'train_cfg.max_iters=2',
            'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2'
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
