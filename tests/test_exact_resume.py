"""kill -9 in the middle of a run, then ``--resume``: the same run.

Each test trains a demo config through ``tools/train.py`` three ways in real
subprocesses (CPU, fixed seed, data workers): uninterrupted; killed with
SIGKILL (the process group: trainer and workers) as soon as its first
checkpoint exists; resumed from that checkpoint with ``--resume``. Every
iteration the resumed run trains must log the losses of the uninterrupted
run, and the final weights must be equal, bit for bit: both runs execute the
same CPU kernels on the same inputs in the same thread configuration.
"""
import glob
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import torch

from conftest import REPO, config_path

MAX_ITERS, CKPT_INTERVAL = 5, 2


def scalars(work_dir: str) -> dict:
    """{iteration: logged scalars} of the newest run in ``work_dir``."""
    runs = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                     'scalars.json')))
    with open(runs[-1]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {
        row['step']: {k: v
                      for k, v in row.items() if k.startswith('loss')}
        for row in rows if 'loss' in row
    }


def train_cmd(cfg: str, work_dir: str, options: list) -> list:
    return [
        sys.executable, osp.join(REPO, 'tools', 'train.py'), cfg,
        '--work-dir', work_dir, '--no-validate', '--cfg-options',
        f'train_cfg.max_iters={MAX_ITERS}',
        f'default_hooks.checkpoint.interval={CKPT_INTERVAL}',
        'default_hooks.checkpoint.max_keep_ckpts=-1',
        'default_hooks.logger.interval=1', 'train_dataloader.batch_size=8',
        'train_dataloader.num_workers=2', *options
    ]


def run_killed_and_resumed(cfg: str, tmp_path, options: list) -> None:
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    full, cut = str(tmp_path / 'full'), str(tmp_path / 'cut')
    uninterrupted = subprocess.Popen(
        train_cmd(cfg, full, options), env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    killed = subprocess.Popen(
        train_cmd(cfg, cut, options), env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    # mmengine writes the checkpoint, then its name to last_checkpoint.
    last = osp.join(cut, 'last_checkpoint')
    deadline = time.time() + 300
    while not osp.exists(last) and killed.poll() is None:
        assert time.time() < deadline, 'no checkpoint within 300 s'
        time.sleep(0.05)
    assert killed.poll() is None, killed.communicate()[1][-3000:]
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert not osp.exists(osp.join(cut, f'iter_{MAX_ITERS}.pth'))
    _, err = uninterrupted.communicate()
    assert uninterrupted.returncode == 0, err[-3000:]

    resumed = subprocess.run(
        train_cmd(cfg, cut, options) + ['--resume'], env=env,
        capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    logged = resumed.stdout + resumed.stderr
    start = int(logged.split('resumed epoch: 0, iter: ')[1].split()[0])
    assert CKPT_INTERVAL <= start < MAX_ITERS

    want, got = scalars(full), scalars(cut)
    assert sorted(got) == list(range(start + 1, MAX_ITERS + 1))
    for step in got:
        assert got[step] == want[step], f'iteration {step}'
    final = f'iter_{MAX_ITERS}.pth'
    want_sd = torch.load(osp.join(full, final), weights_only=False)
    got_sd = torch.load(osp.join(cut, final), weights_only=False)
    for key, value in want_sd['state_dict'].items():
        assert torch.equal(got_sd['state_dict'][key], value), key


def test_vit_demo_killed_and_resumed_is_the_same_run(demo_root, tmp_path):
    run_killed_and_resumed(
        config_path('pretrain', 'm3i_vit-tiny_demo.py'), tmp_path,
        [f'train_dataloader.dataset.data_root={demo_root}'])


def test_multisource_demo_killed_and_resumed_is_the_same_run(
        demo_root, tmp_path):
    # Image-category and image-text sources, λ, the text target encoder.
    run_killed_and_resumed(
        config_path('pretrain', 'm3i_vit-tiny_multisource_demo.py'),
        tmp_path, [
            f'train_dataloader.dataset.datasets.0.data_root={demo_root}',
            f'train_dataloader.dataset.datasets.1.data_root={demo_root}',
            'train_dataloader.persistent_workers=False'
        ])


def write_caption_shards(demo_root: str, folder, num_shards: int,
                         per_shard: int) -> str:
    """The demo's captioned digits as WebDataset tar shards; their pattern."""
    from m3i_mm.datasets import DemoDigitsCaptions
    from m3i_mm.datasets.image_text import write_shard
    captions = DemoDigitsCaptions(data_root=demo_root, split='train')
    for shard in range(num_shards):
        samples = []
        for i in range(shard * per_shard, (shard + 1) * per_shard):
            info = captions.get_data_info(i)
            with open(info['img_path'], 'rb') as f:
                image = f.read()
            samples.append((f'{i:05d}', {
                'png': image,
                'txt': info['caption'].encode()
            }))
        write_shard(str(folder / f'{shard:05d}.tar'), samples)
    return str(folder / ('{00000..%05d}.tar' % (num_shards - 1)))


def test_streamed_shards_multisource_killed_and_resumed_is_the_same_run(
        demo_root, tmp_path):
    # The multisource demo with its captioned source streamed from tar
    # shards (ImageTextShards inside MultiSourceDataset, sampler=None), as
    # the LAION/YFCC/CC12M configs read it. A nominal epoch of 32 samples is
    # 4 batches (2 workers x 16): the run crosses a pass boundary.
    from mmengine.config import Config
    (tmp_path / 'shards').mkdir()
    shards = write_caption_shards(demo_root, tmp_path / 'shards', 4, 8)
    cfg = Config.fromfile(
        config_path('pretrain', 'm3i_vit-tiny_multisource_demo.py'))
    pipeline = cfg.train_pipeline
    assert pipeline[0]['type'] == 'NamedLoadImageFromFile'  # shards: decoded
    cfg.train_dataloader.sampler = None
    cfg.train_dataloader.dataset = dict(
        type='MultiSourceDataset',
        length=32,
        sources=[
            dict(type='DemoDigits', data_root=demo_root, split='train',
                 indices=list(range(0, 1438, 2)), pipeline=pipeline),
            dict(type='ImageTextShards', shards=shards,
                 pipeline=pipeline[1:]),
        ])
    cfg_file = str(tmp_path / 'streamed.py')
    cfg.dump(cfg_file)
    run_killed_and_resumed(cfg_file, tmp_path, [])
