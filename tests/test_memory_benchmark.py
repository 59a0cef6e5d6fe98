"""benchmarks/memory.py: per-rank bytes of DDP and of sharding, from the
shapes of a model built on the meta device (the demo model here; the
README's table is InternImage-H's). FSDP2's actual layout is checked
against :func:`shard_numel` in tests/test_fsdp.py."""
import torch

from conftest import config_path, load_script


def test_meta_model_bytes_per_rank():
    memory = load_script('benchmarks', 'memory.py')
    model = memory.build_meta(config_path('pretrain', 'm3i_vit-tiny_demo.py'))
    assert all(p.is_meta for p in model.parameters())
    ema = {id(p) for p in model.image_target.ema.module.parameters()}
    trainable = sum(p.numel() for p in model.parameters() if id(p) not in ema)
    frozen = sum(p.numel() for p in model.parameters() if id(p) in ema)
    assert frozen == sum(p.numel() for p in model.backbone.parameters())

    ddp = {k: v['ddp'] for k, v in memory.memory_per_rank(model, 8).items()}
    # fp32 weights, gradients and two AdamW moments; the EMA copy's weights.
    assert ddp['total'] == 16 * trainable + 4 * frozen
    one = memory.memory_per_rank(model, 1)
    assert all(one[k]['sharded'] == one[k]['ddp'] for k in
               ('parameters (fp32)', 'gradients (fp32)',
                'momentum encoder (fp32)'))
    eight = memory.memory_per_rank(model, 8)
    # About 1/8, a little more: dim 0 padded to a multiple of 8.
    params = eight['parameters (fp32)']
    assert params['ddp'] / 8 <= params['sharded'] < params['ddp'] / 8 * 1.1
    assert memory.shard_numel((10, 3), 8) == 6 and memory.shard_numel(
        (), 8) == 1
    # The working set: the largest group (a decoder or ViT layer, or the
    # root: category embedding, heads), params + grads in bf16.
    assert eight['unsharded working set']['sharded'] == 4 * max(
        memory.group_sizes(model))
    assert sum(memory.group_sizes(model)) == trainable + frozen
    assert '| total |' in memory.table(eight, 8)
    assert torch.device('meta') == next(model.parameters()).device
