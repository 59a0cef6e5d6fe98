"""Fully-sharded M3I (``M3IFullyShardWrapper``, FSDP2) on CPU with gloo.

Two sharded ranks, each given half of a global batch, against one unsharded
process given the whole batch, on the demo model
(``configs/pretrain/m3i_vit-tiny_demo.py``) with its AdamW, for 3 steps:
the losses (mean over ranks of each rank's share), λ and all parameters,
the momentum encoder's included, gathered on rank 0.

Mixing partners are drawn within each rank's half (the 1-process run draws
them within each half too), so both compute the same function.

Tolerances. Losses and λ: 1e-5 relative (fp32 rounding of two summation
orders). Parameters: AdamW's first steps move each element by about
``lr * g / |g|``, so an element whose exact gradient is 0 (the key biases of
every attention: softmax is shift-invariant) turns the rounding noise of the
two reductions into a step of ±lr (1e-3 per step, measured up to ~2e-3
after 3 steps; see tests/test_dist_train.py). Those elements are told apart
by the 1-process run's gradients: below 1e-6 of their tensor's largest; every
other element agrees within 1e-5. The resumed sharded run (full state saved
on rank 0 after step 2, loaded with ``torch.load(weights_only=True)``)
equals the uninterrupted one exactly.
"""
import os
import os.path as osp
import shutil
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmpretrain.structures import DataSample
from torch.distributed.tensor import DTensor

import m3i_mm.models.utils.multi_input as multi_input

from conftest import REPO, config_path, load_script
from test_balancer import _free_port

CONFIG = config_path('pretrain', 'm3i_vit-tiny_demo.py')
WORLD, B, STEPS, GRID = 2, 2, 3, 8  # B images per rank; 32 px / 4 px


def batches():
    """STEPS global batches of WORLD * B demo-sized samples."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(STEPS):
        n = WORLD * B
        views = [torch.rand(n, 3, 32, 32, generator=gen) * 255
                 for _ in range(2)]
        samples = []
        for i in range(n):
            mask = torch.zeros(GRID * GRID, dtype=torch.bool)
            mask[torch.randperm(GRID * GRID, generator=gen)[:32]] = True
            box = torch.randint(0, 8, (4, ), generator=gen).float()
            sample = DataSample().set_gt_label(i % 10)
            sample.set_field(mask.view(GRID, GRID), 'mask')
            sample.set_field(torch.stack([
                torch.tensor([0., 0., 32., 32.]),
                box + torch.tensor([0., 0., 24., 24.])]), 'view_boxes')
            sample.set_field(torch.tensor([False, False]), 'view_flips')
            samples.append(sample)
        out.append(dict(inputs=views, data_samples=samples))
    return out


def local(batch, rank, world):
    part = slice(rank * B * WORLD // world, (rank + 1) * B * WORLD // world)
    return dict(inputs=[v[part] for v in batch['inputs']],
                data_samples=batch['data_samples'][part])


def within_halves(n, generator=None, device=None):
    """Mixing partners drawn within each rank's B images."""
    return torch.arange(n, device=device).view(-1, B).roll(1, 1).flatten()


def build(sharded: bool):
    """The demo model (same initial weights in every process), its optim
    wrapper and the model that holds the balancer."""
    from mmpretrain.registry import MODELS
    from mmengine.registry import MODEL_WRAPPERS
    init_default_scope('mmpretrain')
    MessageHub.get_current_instance().update_info('max_iters', 100)
    cfg = Config.fromfile(CONFIG)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    inner = model
    if sharded:
        model = MODEL_WRAPPERS.build(
            dict(type='M3IFullyShardWrapper', module=model))
    return model, inner, build_optim_wrapper(model, cfg.optim_wrapper)


def train(model, inner, optim, data, rank, world, steps):
    """Run ``steps``; per step the losses (the mean over ranks) and λ."""
    records = []
    for batch in steps:
        log_vars = model.train_step(local(data[batch], rank, world), optim)
        inner.loss_balancer.reduce_pending()  # GradientNormSyncHook
        if world > 1:
            values = torch.tensor([float(v) for v in log_vars.values()])
            dist.all_reduce(values)
            log_vars = dict(zip(log_vars, (values / world).tolist()))
        records.append(dict({k: float(v) for k, v in log_vars.items()},
                            lam=float(inner.loss_balancer.weight)))
    return records


def _rank_main(rank, port, tmp, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    multi_input.derangement = within_halves  # a spawned process: not undone
    data = batches()
    model, inner, optim = build(sharded=True)
    records = train(model, inner, optim, data, rank, WORLD, [0, 1])
    state, optim_state = model.full_state_dict(optim)
    path = os.path.join(tmp, 'after2.pth')
    if rank == 0:
        torch.save(dict(state_dict=state, optimizer=optim_state), path)
    dist.barrier()
    records += train(model, inner, optim, data, rank, WORLD, [2])
    final = model.full_state_dict()[0]
    # Resume: a new sharded model from the checkpoint, then step 3.
    model, inner, optim = build(sharded=True)
    saved = torch.load(path, weights_only=True)
    model.load_full_state_dict(saved['state_dict'], optim,
                               saved['optimizer'])
    resumed = train(model, inner, optim, data, rank, WORLD, [2])
    resumed_final = model.full_state_dict()[0]
    if rank == 0:
        out.update(records=records, final=final, resumed=resumed,
                   resumed_final=resumed_final,
                   sharded=[n for n, p in inner.named_parameters()
                            if p.to_local().numel() < p.numel()],
                   local=sum(p.to_local().numel()
                             for p in inner.parameters()),
                   shapes=[tuple(p.shape) for p in inner.parameters()])
    dist.destroy_process_group()


def key_bias(name: str, size: int) -> torch.Tensor:
    """Elements of ``name`` that are attention key biases (exact gradient 0):
    the middle third of a packed q, k, v bias."""
    mask = torch.zeros(size, dtype=torch.bool)
    if name.endswith(('qkv.bias', 'in_proj_bias')):
        mask[size // 3:2 * size // 3] = True
    return mask


def largest(x: torch.Tensor) -> float:
    return float(x.max()) if x.numel() else 0.0


# ḡ_uni, ḡ_multi: each rank measures the gradient norms of its own share
# of the loss and the ranks average the squares, so their scale depends on
# how the batch is split (x sqrt(2) on 2 ranks here); their ratio, λ, does
# not and is compared.
PER_SPLIT = ('grad_norm_uni', 'grad_norm_multi')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """The sharded 2-rank run (with its resume) and the 1-process run."""
    out = mp.Manager().dict()
    mp.spawn(_rank_main,
             args=(_free_port(), str(tmp_path_factory.mktemp('fsdp')), out),
             nprocs=WORLD, join=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(multi_input, 'derangement', within_halves)
        model, inner, optim = build(sharded=False)
        data = batches()
        records = train(model, inner, optim, data, 0, 1, range(STEPS))
    return dict(out), records, model.state_dict()


def test_two_sharded_ranks_equal_one_process(runs):
    out, records, state = runs
    # The layers, the backbone and the momentum encoder were sharded.
    assert 'backbone.layers.0.attn.qkv.weight' in out['sharded']
    assert 'image_target.ema.module.layers.0.attn.qkv.weight' in out[
        'sharded']
    # Rank 0 holds what benchmarks/memory.py counts (FSDP2's padded rows).
    memory = load_script('benchmarks', 'memory.py')
    assert out['local'] == sum(memory.shard_numel(shape, WORLD)
                               for shape in out['shapes'])
    for got, want in zip(out['records'], records):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if key not in PER_SPLIT:
                assert got[key] == pytest.approx(value, rel=1e-5), key
    assert records[-1]['lam'] != 1.0  # λ moved
    assert out['final'].keys() == state.keys()
    lr = 1e-3
    for name, want in state.items():
        got = out['final'][name]
        assert not isinstance(got, DTensor) and got.shape == want.shape
        if name.startswith('loss_balancer.'):
            continue  # per-rank norms: compared through λ
        diff = (got.float() - want.float()).abs().flatten()
        bias = key_bias(name, diff.numel())
        assert largest(diff[~bias]) < 2e-5, name
        assert largest(diff[bias]) < 2 * STEPS * lr, name


def test_resumed_sharded_run_is_exact(runs):
    out, _, _ = runs
    assert out['resumed'] == out['records'][-1:]
    for name, value in out['final'].items():
        assert torch.equal(out['resumed_final'][name], value), name


def test_dist_train_sharded_multisource_equals_one_process_and_resumes(
        demo_root, tmp_path):
    """The multisource demo of tests/test_dist_train.py (category and text
    targets, the texts gathered from all ranks, one rank without labelled
    images and the other without captions, SGD), sharded through
    tools/dist_train.sh: equals one process within 1e-5 (measured 3e-7),
    its checkpoint is the unsharded model's and ``--resume`` from it
    computes the last step exactly."""
    import test_dist_train as ddp
    batches = tmp_path / 'batches.pt'
    ddp.global_batches(demo_root, batches)
    runs = {name: tmp_path / name for name in ('two', 'one', 'resumed')}
    configs = {}
    for name, path in runs.items():
        path.mkdir()
        configs[name] = ddp.write_config(tmp_path / name, batches, path,
                                         1 if name != 'one' else 2)
        extra = "custom_hooks.append(dict(type='PlainCheckpointHook'))\n"
        if name != 'one':
            extra += "model_wrapper_cfg = dict(type='M3IFullyShardWrapper')\n"
        configs[name].write_text(configs[name].read_text() + extra)
    options = ['--cfg-options', 'default_hooks.checkpoint.interval=2',
               'default_hooks.checkpoint.max_keep_ckpts=3'] + [
        f'train_dataloader.dataset.datasets.{i}.data_root={demo_root}'
        for i in range(2)]

    def launch(name, *extra):
        ranks = ['2'] if name != 'one' else []
        tool = 'dist_train.sh' if ranks else 'train.py'
        return ddp.start(
            (['bash'] if ranks else [sys.executable]) +
            [osp.join(REPO, 'tools', tool), str(configs[name]), *ranks,
             '--work-dir', str(runs[name]), *extra, *options])

    two, one = launch('two'), launch('one')
    try:
        check(two, one, runs, launch)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # ~1 GB of checkpoints


def check(two, one, runs, launch):
    import test_dist_train as ddp
    two, one = ddp.records(two, runs['two'], 2), ddp.records(
        one, runs['one'], 1)
    for i, ((rank0, rank1), (ref, )) in enumerate(zip(two, one)):
        assert rank0['sha'] == rank1['sha'], f'step {i}'
        for key, value in ref['outputs'].items():
            if key in PER_SPLIT:
                continue
            mean = (rank0['outputs'][key] + rank1['outputs'][key]) / 2
            assert mean == pytest.approx(value, abs=1e-5), (i, key)
        assert rank0['lam'] == pytest.approx(ref['lam'], rel=1e-5)
    assert two[0][0]['outputs']['loss_cls'] == 0.0  # no labelled image
    assert (two[-1][0]['params'] - one[-1][0]['params']).abs().max() < 1e-5
    # The sharded run's checkpoint: the unsharded model's keys, plain data.
    ckpt = torch.load(runs['two'] / 'iter_2.pth', weights_only=True)
    plain = torch.load(runs['one'] / 'iter_2.pth', weights_only=True)
    assert {k: v.shape for k, v in ckpt['state_dict'].items()} == {
        k: v.shape for k, v in plain['state_dict'].items()}
    resumed = launch('resumed', '--resume', str(runs['two'] / 'iter_2.pth'))
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]
    last = torch.load(runs['resumed'] / f'rank0_iter{STEPS - 1}.pt',
                      weights_only=False)
    assert last['sha'] == two[-1][0]['sha']
    assert last['outputs'] == two[-1][0]['outputs']
