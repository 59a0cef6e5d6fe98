"""2-rank DDP on CPU (gloo) through the real launcher: tools/dist_train.sh.

Issue 11, faults 3 and 6: ``dist_train.sh`` could not start on a CPU
(``torch.cuda.set_device``; DDP ``device_ids=[0]`` for a CPU model), and a
rank whose batch had no labelled image (no caption) left the category
embedding (the temperature) out of the graph, which DDP with
``find_unused_parameters=False`` refuses.

The 2-rank run is compared with a 1-process run of the same global batches
(``tools/train.py``): losses, λ and parameters agree within 1e-5. Two
choices make them the same function: mixing partners are drawn within each
rank's batch, so the 1-process run draws them within each half of its batch
with the draws the ranks make (``DDPProbeHook``), and the optimizer is SGD.
With the config's AdamW the parameters differ by up to 1.3e-3 after 3 steps
(measured) although the gradients agree to rounding: AdamW's first steps
are about ``lr * g / |g|`` per element, so elements whose exact gradient is
0 (the key biases of every attention: softmax is shift-invariant) or tiny
turn the rounding noise of the two summation orders (DDP averages two
per-rank gradients) into lr-sized steps.
"""
import os
import os.path as osp
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import default_collate
from mmengine.registry import init_default_scope

from conftest import REPO, config_path
from test_balancer import _free_port

CONFIG = config_path('pretrain', 'm3i_vit-tiny_multisource_demo.py')
B = 2  # images per rank
# Per step, which source each of the 2 * B images comes from (the global
# batch, rank 0 takes the first B): rank 0 has no labelled image and rank 1
# no caption, then the two mixed, then the other way round.
STEPS = [('cap', 'cap', 'lab', 'lab'), ('lab', 'cap', 'cap', 'lab'),
         ('lab', 'lab', 'cap', 'cap')]


def global_batches(demo_root, path):
    """Pipeline outputs of the config's two sources, collated per step."""
    init_default_scope('mmpretrain')
    from mmpretrain.registry import DATASETS
    cfg = Config.fromfile(CONFIG)
    sources = {}
    for name, source in zip(('lab', 'cap'),
                            cfg.train_dataloader.dataset.datasets):
        sources[name] = DATASETS.build(dict(source, data_root=demo_root))
    taken = {'lab': 0, 'cap': 0}
    batches = []
    np.random.seed(0)  # the views' crops and the masks
    for step in STEPS:
        items = []
        for name in step:
            items.append(sources[name][taken[name]])
            taken[name] += 1
        batches.append(default_collate(items))
    torch.save(batches, path)


def write_config(tmp_path, batches, out_dir, virtual_ranks):
    cfg = tmp_path / f'cfg_{virtual_ranks}.py'
    cfg.write_text(f"""
_base_ = [{CONFIG!r}]
custom_imports = dict(imports=['m3i_mm', 'ddp_probe'],
                      allow_failed_imports=False)
custom_hooks = [dict(type='GradientNormSyncHook'),
                dict(type='DDPProbeHook', batches={str(batches)!r},
                     out_dir={str(out_dir)!r}, virtual_ranks={virtual_ranks})]
find_unused_parameters = False
train_dataloader = dict(batch_size={B}, num_workers=0,
                        persistent_workers=False)
train_cfg = dict(max_iters={len(STEPS)}, val_interval=1000)
val_cfg = None
val_dataloader = None
val_evaluator = None
param_scheduler = []
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='SGD', lr=0.05, momentum=0.9,
                   weight_decay=0.05))
default_hooks = dict(checkpoint=dict(interval=1000),
                     logger=dict(interval=1))
log_level = 'WARNING'
""")
    return cfg


def start(args):
    env = dict(
        os.environ,
        PYTHONPATH=f'{REPO}:{osp.join(REPO, "tests")}',
        PATH=f'{osp.dirname(sys.executable)}:{os.environ["PATH"]}',
        PORT=str(_free_port()),
        OMP_NUM_THREADS='1',
        CUDA_VISIBLE_DEVICES='')
    return subprocess.Popen(args, env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def records(proc, out_dir, ranks):
    out, _ = proc.communicate(timeout=600)
    errors = '\n'.join(line for line in out.splitlines() if 'Error' in line)
    assert proc.returncode == 0, errors[-3000:] + out[-2000:]
    return [[torch.load(out_dir / f'rank{r}_iter{i}.pt', weights_only=False)
             for r in range(ranks)] for i in range(len(STEPS))]


def test_two_ranks_without_some_targets_equal_one_rank(demo_root, tmp_path):
    batches = tmp_path / 'batches.pt'
    global_batches(demo_root, batches)

    data = [f'train_dataloader.dataset.datasets.{i}.data_root={demo_root}'
            for i in range(2)]
    two, one = tmp_path / 'two', tmp_path / 'one'
    two.mkdir(), one.mkdir()
    ddp = start(['bash', osp.join(REPO, 'tools', 'dist_train.sh'),
                 str(write_config(tmp_path, batches, two, 1)), '2',
                 '--work-dir', str(two), '--cfg-options', *data])
    single = start([sys.executable, osp.join(REPO, 'tools', 'train.py'),
                    str(write_config(tmp_path, batches, one, 2)),
                    '--work-dir', str(one), '--cfg-options', *data])
    ddp, single = records(ddp, two, 2), records(single, one, 1)
    try:
        for i, ((rank0, rank1), (ref, )) in enumerate(zip(ddp, single)):
            # Identical parameters on both ranks after every step.
            assert rank0['sha'] == rank1['sha'], f'step {i}'
            # Each rank's loss is its share of the global mean.
            for key in ('loss_cls', 'loss_text', 'loss_img_first',
                        'loss_img_second'):
                mean = (rank0['outputs'][key] + rank1['outputs'][key]) / 2
                assert mean == pytest.approx(ref['outputs'][key],
                                             abs=1e-5), (i, key)
            assert rank0['lam'] == pytest.approx(ref['lam'], rel=1e-5)
        # Rank 0 had no labelled image, rank 1 no caption, in step 0.
        assert ddp[0][0]['outputs']['loss_cls'] == 0.0
        assert ddp[0][1]['outputs']['loss_text'] == 0.0
        assert ddp[-1][0]['lam'] != 1.0
        diff = (ddp[-1][0]['params'] - single[-1][0]['params']).abs().max()
        assert diff < 1e-5
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # ~300 MB of weights
