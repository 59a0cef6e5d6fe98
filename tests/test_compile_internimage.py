"""``torch.compile`` of the M3I step on InternImage-H (issue 19): the
configuration of ``m3i_internimage-h.py`` (activation checkpointing,
uniform stochastic depth 0.2, the fused stride-16 map) on a narrow H, 64-px
views of the demo digits (a 4x4 token grid).

Before DCNv3's custom ops, ``M3I.loss`` broke the graph 9 times here (31
without checkpointing; torch 2.13): at every DCNv3 call, whose backward
computed corner dots on sparse CSR tensors under ``warnings.catch_warnings``
and row offsets by ``bincount``, and in ``m3i.py`` (the token split's host
read). The compiled step equalled the eager one then too: broken frames run
eagerly.
"""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import default_collate
from mmengine.logging import MessageHub
from mmengine.registry import DefaultScope

from conftest import config_path
from test_compile import assert_compiled_equals_eager
from test_internimage import TINY_H

SIZE, STRIDE, DIMS = 64, 16, TINY_H['clip_embed_dims']


def narrow_h_config() -> Config:
    """``m3i_internimage-h.py`` with the narrow H, 32-wide heads and 64-px
    views of the demo digits (``data_root`` still to set)."""
    cfg = Config.fromfile(config_path('pretrain', 'm3i_internimage-h.py'))
    heads = dict(in_channels=DIMS, embed_dims=DIMS, num_heads=4)
    cfg.merge_from_dict({
        'model.backbone.arch': dict(TINY_H, _delete_=True),
        'model.image_decoder': dict(heads, out_channels=DIMS, depth=1),
        'model.category_head': dict(heads, out_channels=DIMS),
        'model.category_embedding': dict(num_classes=10, embed_dims=DIMS),
    })
    dataset = cfg.train_dataloader.dataset
    dataset.type, dataset.split = 'DemoDigits', 'train'
    views, masker, _ = dataset.pipeline
    views.size = masker.input_size = SIZE
    assert masker.patch_size == STRIDE
    return cfg


@pytest.fixture(scope='module')
def h_step(demo_root):
    from mmpretrain.registry import DATASETS, MODELS
    MessageHub.get_current_instance().update_info('max_iters', 100)
    cfg = narrow_h_config()
    cfg.train_dataloader.dataset.data_root = demo_root
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        dataset = DATASETS.build(cfg.train_dataloader.dataset)
        torch.manual_seed(0)
        model = MODELS.build(cfg.model).train()
    batch = default_collate([dataset[i] for i in range(4)])
    data = model.data_preprocessor(batch, training=True)
    return model, data['inputs'], data['data_samples']


def test_internimage_m3i_loss_is_one_graph(h_step):
    """No graph break in ``M3I.loss``.

    ``explain`` lists no reason for a frame that dynamo gives up on (a
    break inside a checkpointed block), so dynamo's own break counter is
    checked too.
    """
    from torch._dynamo.utils import counters
    model, inputs, samples = h_step
    torch._dynamo.reset()
    counters.clear()
    explained = torch._dynamo.explain(copy.deepcopy(model).loss)(inputs,
                                                                 samples)
    assert explained.graph_break_count == 0, [
        (r.reason.splitlines()[0], r.user_stack[-1:])
        for r in explained.break_reasons
    ]
    assert not counters['graph_break'], dict(counters['graph_break'])


def test_internimage_compiled_step_equals_the_eager_step(h_step):
    """``aot_eager``: bit-equal losses, λ, gradients and buffers over two
    steps, DCNv3's custom ops, checkpointing and stochastic depth included.
    """
    model, inputs, samples = h_step
    assert_compiled_equals_eager(model, inputs, samples)
