"""Live training monitors (issue 22): M3IMonitorHook, the balancer's λ and
ḡ's in the step log, TensorBoard events, tools/plot_run.py.

One real ``tools/train.py`` run of the demo (4 iterations, monitors every
2) is read by several tests; a second run without the monitor shows that
the monitor leaves the training stream (losses, weights) bit for bit alone.
"""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, config_path

ITERS, INTERVAL = 4, 2
MONITORS = ('monitor/category_top1', 'monitor/knn_top1')


def train(work_dir: str, demo_root: str, options=()) -> None:
    cmd = [
        sys.executable, osp.join(REPO, 'tools', 'train.py'),
        config_path('pretrain', 'm3i_vit-tiny_demo.py'), '--work-dir',
        work_dir, '--cfg-options', f'train_cfg.max_iters={ITERS}',
        f'default_hooks.checkpoint.interval={ITERS}',
        'default_hooks.logger.interval=1', 'log_processor.window_size=1',
        'train_dataloader.batch_size=16',
        'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        f'train_dataloader.dataset.data_root={demo_root}',
        f'monitor_dataloader.dataset.data_root={demo_root}', *options
    ]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def scalar_rows(work_dir: str) -> list:
    path, = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope='module')
def run(demo_root, tmp_path_factory) -> str:
    work_dir = str(tmp_path_factory.mktemp('monitored'))
    train(work_dir, demo_root,
          [f'default_hooks.monitor.interval={INTERVAL}'])
    return work_dir


def by_step(rows: list, key: str) -> dict:
    return {row['step']: row[key] for row in rows if key in row}


def test_monitor_values_logged_at_the_interval(run):
    rows = scalar_rows(run)
    for key in MONITORS:
        values = by_step(rows, key)
        assert sorted(values) == [INTERVAL, 2 * INTERVAL], key
        assert all(0 <= v <= 100 for v in values.values())


def test_monitor_numbers_equal_a_computation_by_hand(run, demo_root):
    # The checkpoint of the last iteration holds the weights the monitor saw
    # at that iteration; top-1 recomputed here from the raw val digits.
    from mmengine.config import Config
    from mmpretrain.registry import MODELS

    from m3i_mm.evaluation.probe import load_demo_split
    cfg = Config.fromfile(config_path('pretrain', 'm3i_vit-tiny_demo.py'))
    model = MODELS.build(cfg.model)
    state = torch.load(osp.join(run, f'iter_{ITERS}.pth'), weights_only=False)
    model.load_state_dict(state['state_dict'])
    model.eval()
    images, labels = load_demo_split(demo_root, 'val')
    with torch.no_grad():
        fmap = model.backbone((images.float() - 127.5) / 127.5)[-1]
        tokens = fmap.flatten(2).transpose(1, 2)  # (N, L, C)
        pooled = model.category_head(tokens)
        logits = pooled @ model.category_embedding.weight.t() + \
            model.category_embedding.bias
    category = float((logits.argmax(1) == labels).double().mean()) * 100
    # k-NN: even val positions are the bank, odd ones the queries.
    feats = F.normalize(tokens.mean(1).double(), dim=1)
    bank, queries = feats[0::2], feats[1::2]
    bank_y, query_y = labels[0::2], labels[1::2]
    sims, idx = (queries @ bank.t()).topk(20, dim=1)
    votes = torch.zeros(len(queries), 10, dtype=torch.float64)
    votes.scatter_add_(1, bank_y[idx], (sims / 0.07).exp())
    knn = float((votes.argmax(1) == query_y).double().mean()) * 100

    rows = scalar_rows(run)
    assert by_step(rows, 'monitor/category_top1')[ITERS] == \
        pytest.approx(category, abs=1e-4)
    assert by_step(rows, 'monitor/knn_top1')[ITERS] == \
        pytest.approx(knn, abs=1e-4)


def test_balancer_values_logged_every_step_outside_the_loss(run):
    rows = [r for r in scalar_rows(run) if 'loss' in r]
    assert [r['step'] for r in rows] == list(range(1, ITERS + 1))
    for row in rows:
        # λ, ḡ_uni, ḡ_multi are logged but not summed into the loss.
        targets = row['loss_img_first'] + row['loss_img_second'] + \
            row['loss_cls']
        assert row['loss'] == pytest.approx(targets, rel=1e-5)
        if row['step'] > 1:  # measured: λ = γ ḡ_uni / ḡ_multi
            assert row['grad_norm_uni'] > 0 and row['grad_norm_multi'] > 0
            assert row['lambda_sp'] == pytest.approx(
                row['grad_norm_uni'] / row['grad_norm_multi'], rel=1e-4)


def test_tensorboard_events_hold_the_monitor_scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import \
        EventAccumulator
    folder, = glob.glob(osp.join(run, '*', 'vis_data'))
    events = EventAccumulator(folder)
    events.Reload()
    tags = events.Tags()['scalars']
    rows = scalar_rows(run)
    for key in MONITORS + ('lambda_sp', 'grad_norm_uni', 'grad_norm_multi'):
        assert key in tags, tags
        logged = {e.step: e.value for e in events.Scalars(key)}
        assert logged == pytest.approx(by_step(rows, key), rel=1e-6)


def test_monitor_leaves_the_training_stream_alone(demo_root, tmp_path):
    # Without ResumableRandomnessHook (which reseeds every iteration) a
    # random draw of the monitor would shift every later one.
    runs = {}
    for name, monitor in (('plain', 'default_hooks.monitor=None'),
                          ('monitored', 'default_hooks.monitor.interval=1')):
        runs[name] = str(tmp_path / name)
        train(runs[name], demo_root,
              ['default_hooks.randomness=None', monitor])
    want, got = (scalar_rows(runs[name]) for name in ('plain', 'monitored'))
    assert {r['step']: r['loss'] for r in got if 'loss' in r} == \
        {r['step']: r['loss'] for r in want if 'loss' in r}
    assert len(by_step(got, 'monitor/knn_top1')) == ITERS
    name = f'iter_{ITERS}.pth'
    a, b = (torch.load(osp.join(runs[run], name),
                       weights_only=False)['state_dict']
            for run in ('plain', 'monitored'))
    for key, value in a.items():
        assert torch.equal(b[key], value), key


def plot_run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'plot_run.py'), *args],
        env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
        text=True)


def test_plot_run_writes_a_png(run, tmp_path):
    out = str(tmp_path / 'curves.png')
    done = plot_run(run, '--out', out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == out
    with open(out, 'rb') as f:
        head = f.read(8)
    assert head == b'\x89PNG\r\n\x1a\n' and osp.getsize(out) > 10_000


def test_plot_run_names_a_folder_without_a_run_log(tmp_path):
    done = plot_run(str(tmp_path))
    assert done.returncode != 0
    assert str(tmp_path) in done.stderr and 'scalars.json' in done.stderr
    assert 'Traceback' not in done.stderr


PRETRAIN = sorted(glob.glob(config_path('pretrain', '**', '*.py'),
                            recursive=True))


@pytest.mark.parametrize('path', PRETRAIN,
                         ids=[osp.relpath(p, REPO) for p in PRETRAIN])
def test_every_pretrain_config_has_the_monitors(path):
    from mmengine.config import Config
    cfg = Config.fromfile(path)
    assert cfg.default_hooks.monitor.type == 'M3IMonitorHook'
    assert cfg.monitor_dataloader.dataset.split == 'val'
    assert {'LocalVisBackend', 'TensorboardVisBackend'} <= {
        b['type'] for b in cfg.visualizer.vis_backends}


def test_zero_shot_monitor_equals_predict(demo_root):
    # The multisource demo scores class-name prompts (model.zero_shot).
    from mmengine.config import Config
    from mmpretrain.registry import MODELS

    from m3i_mm.engine.hooks import M3IMonitorHook
    from m3i_mm.evaluation.probe import load_demo_split
    cfg = Config.fromfile(
        config_path('pretrain', 'm3i_vit-tiny_multisource_demo.py'))
    cfg.monitor_dataloader.dataset.data_root = demo_root
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    hook = M3IMonitorHook(interval=1, num_samples=64,
                          dataloader=cfg.monitor_dataloader)
    results = hook.evaluate(model)
    assert model.training  # back in train mode
    assert set(results) == {'monitor/category_top1',
                            'monitor/zero_shot_top1', 'monitor/knn_top1'}
    images, labels = load_demo_split(demo_root, 'val')
    keep = torch.tensor([i * len(images) // 64 for i in range(64)])
    model.eval()
    preds = model.predict((images[keep].float() - 127.5) / 127.5)
    top1 = float(sum(int(p.pred_label) == int(y)
                     for p, y in zip(preds, labels[keep]))) / 64 * 100
    assert results['monitor/zero_shot_top1'] == pytest.approx(top1)
