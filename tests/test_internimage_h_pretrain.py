"""InternImage-H pre-training tokens (issue 21, item 1): the H/G head's fused
stage-3+4 map, 1,024 channels at stride 16 (paper Table 7: attention-pooling
input 1,024), so at 192 px the tokens, the mask and the dense targets are a
12x12 grid of 16-pixel patches."""
import torch
from mmengine.config import Config
from mmengine.registry import TRANSFORMS

from m3i_mm.models.backbones.internimage import InternImage

from conftest import config_path
from test_internimage import TINY_H

H_CONFIGS = ['m3i_internimage-h.py', 'm3i_internimage-h_multisource.py',
             'm3i_internimage-h_fsdp.py']


def test_fused_map_of_a_narrow_h_is_stride_16():
    torch.manual_seed(0)
    model = InternImage(arch=TINY_H, out_indices=(5, ))
    model.init_weights()
    (tokens, ) = model(torch.randn(2, 3, 192, 192))
    assert tuple(tokens.shape) == (2, TINY_H['clip_embed_dims'], 12, 12)
    # Only the fusion is built: every parameter gets a gradient (DDP).
    assert not hasattr(model.cls_proj, 'attn_pool')
    tokens.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_fused_map_is_what_the_classifier_pools():
    """Same keys as the classification checkpoints: a (4,) state dict loads
    into a (5,) backbone, whose map the (4,) head pools."""
    torch.manual_seed(0)
    classifier = InternImage(arch=TINY_H, out_indices=(5, 4))
    classifier.init_weights()
    tokens = InternImage(arch=TINY_H, out_indices=(5, ))
    state = {k: v for k, v in classifier.state_dict().items()}
    missing, unexpected = tokens.load_state_dict(state, strict=False)
    assert not missing
    assert unexpected and all('attn_pool' in k or 'cls_proj.norm' in k
                              for k in unexpected)
    x = torch.randn(1, 3, 64, 64)
    fused, pooled = classifier(x)
    torch.testing.assert_close(tokens(x)[0], fused)
    head = classifier.cls_proj
    torch.testing.assert_close(
        head.norm(head.attn_pool(fused.flatten(2).transpose(1, 2))), pooled)


def test_h_configs_pretrain_on_the_12x12_fused_map():
    for name in H_CONFIGS:
        cfg = Config.fromfile(config_path('pretrain', name))
        model = cfg.model
        assert model.backbone.out_indices == (5, ), name
        with torch.device('meta'):
            backbone = InternImage(**{
                k: v
                for k, v in model.backbone.items() if k != 'type'
            })
        proj = backbone.cls_proj
        assert proj.proj_x3.out_channels == 1024 and \
            proj.proj_x4.out_channels == 4 * 1024
        assert model.mixer.patch_size == 16
        assert model.image_decoder.in_channels == 1024
        assert model.image_decoder.out_channels == 1024
        assert model.category_head.in_channels == 1024
        if 'text_head' in model:
            assert model.text_head.in_channels == 1024
        dataset = cfg.train_dataloader.dataset
        pipelines = [s.pipeline for s in dataset.sources] \
            if 'sources' in dataset else [dataset.pipeline]
        for pipeline in pipelines:
            (masker, ) = [t for t in pipeline
                          if t.type == 'BlockwiseMaskGenerator']
            assert masker.patch_size == 16
            mask = TRANSFORMS.build(masker)({})['mask']
            assert mask.shape == (12, 12) and mask.sum() == 72, name
