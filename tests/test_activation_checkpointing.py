"""Activation checkpointing of the ViT backbone and the image decoder.

The checkpointed model recomputes each layer in the backward pass: the
gradients of the whole M3I loss must be those of the plain model. On CPU the
recomputation runs the same kernels on the same inputs, and torch's
checkpoint restores the random state (stochastic depth), so they agree to
rounding of the gradient accumulation order: tolerance 1e-6 absolute /
1e-5 relative (measured: 0, bit-identical).
"""
import torch
from mmengine.logging import MessageHub

from conftest import TINY_ARCH, TINY_DIMS, TINY_PATCH, TINY_SIZE, tiny_m3i
from test_m3i_model import make_batch


def build(with_cp: bool):
    torch.manual_seed(0)
    return tiny_m3i(
        backbone=dict(type='CheckpointedVisionTransformer', arch=TINY_ARCH,
                      img_size=TINY_SIZE, patch_size=TINY_PATCH,
                      out_type='featmap', drop_path_rate=0.3,
                      with_cp=with_cp),
        image_decoder=dict(type='ImageTargetDecoder', in_channels=TINY_DIMS,
                           out_channels=TINY_DIMS, embed_dims=32, depth=2,
                           num_heads=4, with_cp=with_cp))


def grads_and_calls(model):
    """Gradients of one M3I loss and how often each layer ran forward."""
    MessageHub.get_current_instance().update_info('max_iters', 100)
    calls = {'vit': 0, 'decoder': 0}
    model.backbone.layers[0].attn.register_forward_hook(
        lambda *_: calls.__setitem__('vit', calls['vit'] + 1))
    model.image_decoder.layers.layers[0].linear1.register_forward_hook(
        lambda *_: calls.__setitem__('decoder', calls['decoder'] + 1))
    model.train()
    views, samples = make_batch()
    torch.manual_seed(1)  # stochastic depth's draws
    losses = model.loss(views, samples)
    sum(v for k, v in losses.items() if k.startswith('loss')).backward()
    return {n: p.grad for n, p in model.named_parameters()
            if p.grad is not None}, calls


def test_checkpointed_gradients_equal_plain_ones():
    plain, plain_calls = grads_and_calls(build(False))
    ckpt, ckpt_calls = grads_and_calls(build(True))
    assert plain_calls == {'vit': 1, 'decoder': 2}  # decoder: 2 images
    # Recomputed in the backward pass: each layer ran twice.
    assert ckpt_calls == {'vit': 2, 'decoder': 4}
    assert plain.keys() == ckpt.keys() and len(plain) > 20
    for name, grad in plain.items():
        torch.testing.assert_close(ckpt[name], grad, atol=1e-6, rtol=1e-5,
                                   msg=name)


def test_same_state_dict_keys_and_no_recompute_without_grad():
    plain, ckpt = build(False), build(True)
    assert plain.state_dict().keys() == ckpt.state_dict().keys()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.eval()
    with torch.no_grad():
        out = ckpt.backbone(torch.randn(2, 3, TINY_SIZE, TINY_SIZE))
    assert out[-1].shape == (2, TINY_DIMS, TINY_SIZE // TINY_PATCH,
                             TINY_SIZE // TINY_PATCH)
