"""Bad input on ``tools/train.py``'s command line, as users type it (real
runs, forked from the ``zygote``): refused before the run is built, naming
the option, file or value."""
import os
import re
import subprocess
import sys
import time

import pytest
from PIL import Image

from conftest import REPO, config_path
from test_labels import bad_ann_file

DEMO_CFG = config_path('demo', 'vit-tiny_sup_demo.py')


def train_args(demo_root, work_dir, *options, resume=()):
    return [
        DEMO_CFG, '--work-dir', str(work_dir), '--no-validate', *resume,
        '--cfg-options', f'train_dataloader.dataset.data_root={demo_root}',
        'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'train_dataloader.batch_size=4', 'model.backbone.arch.num_layers=1',
        'train_cfg.max_iters=1', *options
    ]


def run(zygote, args, tmp_path):
    start = time.perf_counter()
    status, log = zygote.run(args, tmp_path / 'log.txt')
    return status, log, time.perf_counter() - start


@pytest.mark.parametrize('option,refusal', [
    ('train_cfg.max_iters', r"--cfg-options 'train_cfg\.max_iters': "
     r'expected KEY=VALUE'),
    ('optim_wrapper.optimizer.lr=1e-3x',
     r"--cfg-options optim_wrapper\.optimizer\.lr='1e-3x': the config has "
     r"0\.001 there, so it takes a number, not str '1e-3x'"),
    ('train_cfg.max_iters=True',
     r'--cfg-options train_cfg\.max_iters=True: the config has 300 there, so '
     r'it takes a number, not bool True'),
])
def test_bad_cfg_option_is_refused_at_parse_time(zygote, demo_root, tmp_path,
                                                 option, refusal):
    """Without ``=``: ``ValueError: not enough values to unpack``; with
    ``lr=1e-3x``: a ``TypeError`` inside the optimizer after the run was
    built."""
    status, log, _ = run(zygote, train_args(demo_root, tmp_path / 'work',
                                            option), tmp_path)
    assert status == 2, log[-2000:]
    assert 'usage: ' in log and 'error: ' in log
    assert re.search(refusal, log), log[-2000:]
    assert not (tmp_path / 'work').exists()


def test_resume_of_a_folder_says_it_is_one(zygote, demo_root, tmp_path):
    """It said ``--resume checkpoint not found`` for a folder that exists."""
    folder = tmp_path / 'work'
    folder.mkdir()
    status, log, _ = run(zygote, train_args(
        demo_root, folder, resume=('--resume', str(folder))), tmp_path)
    assert status == 2, log[-2000:]
    assert f'--resume {folder} is a folder; give a checkpoint file in it, ' \
        'or --resume without a path' in log, log[-2000:]
    assert list(folder.iterdir()) == []


def test_resume_of_an_image_is_refused_at_startup(zygote, demo_root,
                                                  tmp_path):
    """It built the whole run (~90 s on the ViT-B configs), then refused the
    file as holding "a pickled object outside the allow-list" and advised
    ``M3I_TRUST_CHECKPOINTS=1``: wrong diagnosis, dangerous advice."""
    png = tmp_path / 'iter_100.png'
    Image.new('RGB', (8, 8)).save(png)
    work = tmp_path / 'work'
    status, log, seconds = run(zygote, train_args(
        demo_root, work, resume=('--resume', str(png))), tmp_path)
    assert status == 2, log[-2000:]
    assert f'NotACheckpointError: Could not read checkpoint {png} (not a ' \
        'torch checkpoint, truncated or damaged): BadZipFile' in log, \
        log[-2000:]
    assert 'M3I_TRUST_CHECKPOINTS' not in log
    assert not work.exists()  # refused before the Runner made its folders
    assert seconds < 10


def test_label_out_of_range_names_file_line_and_num_classes(
        zygote, demo_root, tmp_path):
    """It failed at the first batch with ``IndexError: Target 10 is out of
    bounds``."""
    ann, image = bad_ann_file(demo_root, tmp_path, '10')
    status, log, _ = run(zygote, train_args(
        demo_root, tmp_path / 'work',
        f'train_dataloader.dataset.ann_file={ann}'), tmp_path)
    assert status == 1, log[-2000:]
    assert f'{ann}, line 3 ({image}): label 10 is outside 0..9 ' \
        '(num_classes=10)' in log, log[-2000:]


@pytest.mark.parametrize('case', ['no_equals', 'bad_number', 'folder'])
def test_test_cli_names_bad_options_and_folders(demo_root, tmp_path, case):
    """``tools/test.py`` used mmengine's plain ``DictAction`` (``ValueError:
    not enough values to unpack``; ``lr=1e-3x`` went unchecked) and called a
    checkpoint folder that exists "not found"."""
    checkpoint = tmp_path / 'iter_1.pth'
    checkpoint.write_bytes(b'')
    options = {'no_equals': ['test_dataloader.batch_size'],
               'bad_number': ['test_dataloader.batch_size=8x'],
               'folder': []}[case]
    if case == 'folder':
        checkpoint = tmp_path
    res = subprocess.run(
        [sys.executable, 'tools/test.py', DEMO_CFG, str(checkpoint),
         '--work-dir', str(tmp_path / 'work'), '--cfg-options',
         f'test_dataloader.dataset.data_root={demo_root}', *options],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=REPO))
    assert res.returncode == 2, res.stderr[-2000:]
    refusal = {
        'no_equals': "--cfg-options 'test_dataloader.batch_size': expected "
                     'KEY=VALUE',
        'bad_number': "--cfg-options test_dataloader.batch_size='8x': the "
                      'config has',
        'folder': f'checkpoint {tmp_path} is a folder; give a file'}[case]
    assert refusal in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / 'work').exists()
