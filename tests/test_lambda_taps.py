"""The gradient taps of λ measure the paper's ḡ_uni / ḡ_multi (App. B.1).

ḡ is the norm of the gradient each loss group sends back to the input
features of the heads: the encoder's output tokens (the ViT's final
LayerNorm output, captured here by a forward hook, independently of M3I's
token plumbing). For every input mode the configs use, in fp32 and under
CPU bf16 autocast, the taps' measurement of one training backward is
compared with ``torch.autograd.grad`` of each loss alone (issue 21, item 9).
"""
import os
import os.path as osp
import json
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub

from m3i_mm.registry import MODELS
from conftest import REPO, config_path, demo_loader_options

DEMO_CFG = config_path('pretrain', 'm3i_vit-tiny_demo.py')
# Input modes of the configs: M3I (mix), w/o mix (mask, masked tokens
# dropped), mask with masked patches encoded, full (Table 5 rows).
MODES = {
    'mix': dict(mode='mix', target_views=('same', 'different')),
    'mask_drop': dict(mode='mask', target_views=('different', 'different'),
                      drop_masked=True),
    'mask': dict(mode='mask', target_views=('same', 'different')),
    'full': dict(mode='full', target_views=('different', 'different')),
}
# Relative tolerance of tap vs separate backward: fp32 sums in another
# order; bf16 gradients (8-bit mantissa) are summed by autograd in bf16.
RTOL = {'fp32': 1e-4, 'bf16': 3e-2}


@pytest.fixture(autouse=True)
def max_iters():
    MessageHub.get_current_instance().update_info('max_iters', 100)


def demo_model(mixer: dict):
    model = Config.fromfile(DEMO_CFG).model.to_dict()
    model['mixer'].update(mixer)
    torch.manual_seed(0)
    m = MODELS.build(model)
    m.init_weights()
    return m.train()


def demo_batch(n=8, seed=0):
    from mmpretrain.structures import DataSample
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, 3, 32, 32, generator=gen) for _ in range(2)]
    samples = []
    for i in range(n):
        mask = torch.zeros(64, dtype=torch.bool)
        mask[torch.randperm(64, generator=gen)[:32]] = True
        s = DataSample().set_gt_label(i % 10)
        s.set_field(mask.view(8, 8), 'mask')
        s.set_field(torch.tensor([[0., 0., 32., 32.], [3., 1., 29., 30.]]),
                    'view_boxes')
        s.set_field(torch.tensor([False, False]), 'view_flips')
        samples.append(s)
    return views, samples


@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
@pytest.mark.parametrize('mode', list(MODES))
def test_taps_match_a_separate_backward(mode, precision):
    model = demo_model(MODES[mode])
    balancer = model.loss_balancer
    features = []
    model.backbone.ln1.register_forward_hook(
        lambda mod, inp, out: features.append(out))
    views, samples = demo_batch()
    for step in range(3):  # λ ≠ 1 from the 2nd step on
        features.clear()
        with torch.autocast('cpu', dtype=torch.bfloat16,
                            enabled=precision == 'bf16'):
            losses = model.loss(views, samples)
        lam = float(losses['lambda_sp'])
        uni = sum(v for k, v in losses.items() if k.startswith('loss_img'))
        multi = losses['loss_cls']  # λ·L_cls
        (z, ) = features
        ref_uni, ref_multi = (torch.autograd.grad(
            loss, z, retain_graph=True)[0].float().norm()
            for loss in (uni, multi))
        balancer.pending_norms.zero_()  # what the reference backward tapped
        balancer.pending_reduced.fill_(False)
        model.zero_grad()
        (uni + multi).backward()
        tapped = balancer.pending_norms.sqrt()
        rtol = RTOL[precision]
        assert float(ref_uni) > 0 and float(ref_multi) > 0
        torch.testing.assert_close(tapped[0], ref_uni, rtol=rtol, atol=0)
        torch.testing.assert_close(tapped[1], ref_multi, rtol=rtol, atol=0)
        # The next step folds them in: ḡ_multi per unit λ.
        ema = balancer.ema_norms.clone()
        count = int(balancer.num_updates)
        balancer.step()
        m = balancer.momentum
        expected = (ema * m + torch.stack(
            [ref_uni, ref_multi / lam]) * (1 - m)) / (1 - m**(count + 1))
        torch.testing.assert_close(balancer.mean_norms, expected,
                                   rtol=rtol, atol=0)


def test_both_norms_are_logged_each_iteration_of_a_train_run(
        demo_root, tmp_path):
    """A 3-iteration tools/train.py run of the demo logs ḡ_uni, ḡ_multi and
    λ at every iteration (the scalars file of the visualizer)."""
    args = [
        sys.executable, osp.join(REPO, 'tools', 'train.py'), DEMO_CFG,
        '--work-dir', str(tmp_path), '--cfg-options',
        *demo_loader_options(demo_root, ('train_dataloader', )),
        'monitor_dataloader.dataset.data_root=' + demo_root,
        'train_dataloader.batch_size=8', 'train_cfg.max_iters=3',
        'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.interval=1000',
        'default_hooks.monitor.interval=1000'
    ]
    env = dict(os.environ, PYTHONPATH=REPO)
    run = subprocess.run(args, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (scalars, ) = tmp_path.glob('*/vis_data/scalars.json')
    rows = [json.loads(line) for line in scalars.read_text().splitlines()]
    rows = [r for r in rows if 'grad_norm_uni' in r or 'loss' in r]
    assert [r['iter'] for r in rows] == [1, 2, 3]
    for row in rows:
        assert {'grad_norm_uni', 'grad_norm_multi', 'lambda_sp'} <= set(row)
    # Measured from the 2nd iteration on (the 1st folds in nothing).
    assert rows[-1]['grad_norm_uni'] > 0 and rows[-1]['grad_norm_multi'] > 0
