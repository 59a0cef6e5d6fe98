"""Mixed precision (issue 11): bf16 autocast on CPU for a whole M3I step and
for InternImage with DCNv3 (``CPUAwareAmpOptimWrapper``, the wrapper of
``configs/_base_/precision``); what must stay fp32 stays fp32."""
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub

from m3i_mm.engine import CPUAwareAmpOptimWrapper
from m3i_mm.models.backbones.internimage import InternImage
from m3i_mm.models.losses import BoltzmannPosterior
from m3i_mm.ops import DCNv3

from conftest import config_path, load_script
from test_balancer import multisource_batch, multisource_model


@pytest.fixture(autouse=True)
def max_iters():
    MessageHub.get_current_instance().update_info('max_iters', 100)


def parse(argv, monkeypatch):
    train = load_script('tools', 'train.py')
    monkeypatch.setattr('sys.argv', ['train.py', *argv])
    args = train.parse_args()
    return train.merge_args(Config.fromfile(args.config), args)


@pytest.mark.skipif(torch.cuda.is_available(), reason='CPU behaviour')
def test_amp_flag_selects_bf16_on_cpu(monkeypatch):
    """``tools/train.py --amp`` refused to run without CUDA."""
    cfg = parse([config_path('pretrain', 'm3i_vit-tiny_demo.py'), '--amp'],
                monkeypatch)
    assert cfg.optim_wrapper.type == 'CPUAwareAmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16'


def test_precision_switch_rewrites_the_wrapper(monkeypatch):
    vitb = config_path('pretrain', 'm3i_vitb.py')
    assert parse([vitb], monkeypatch).optim_wrapper.dtype == 'float16'
    fp32 = parse([vitb, '--precision', 'fp32'], monkeypatch).optim_wrapper
    assert fp32.type == 'OptimWrapper' and 'dtype' not in fp32
    assert 'loss_scale' not in fp32 and fp32.clip_grad.max_norm == 1.0
    bf16 = parse([config_path('pretrain', 'm3i_vit-tiny_demo.py'),
                  '--precision', 'bf16'], monkeypatch).optim_wrapper
    assert bf16.type == 'CPUAwareAmpOptimWrapper' and bf16.dtype == 'bfloat16'


@pytest.mark.skipif(torch.cuda.is_available(), reason='CPU behaviour')
def test_fp16_on_cpu_is_refused_with_the_remedy():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match='bfloat16'):
        CPUAwareAmpOptimWrapper(
            dtype='float16', optimizer=torch.optim.SGD(model.parameters(),
                                                       lr=0.1))


def test_whole_m3i_step_under_bf16_autocast(monkeypatch):
    """Image, category and text targets and λ through m3i_mm's
    CPUAwareAmpOptimWrapper (``train_step``): matmuls in bf16, the posteriors'
    logits, λ's norms and the EMA weights in fp32."""
    torch.manual_seed(0)
    model = multisource_model()
    wrapper = CPUAwareAmpOptimWrapper(
        dtype='bfloat16',
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
    logits_dtypes, matmul_dtypes = [], []
    logits = BoltzmannPosterior.logits

    def spy(self, *args, **kwargs):
        out = logits(self, *args, **kwargs)
        logits_dtypes.append(out.dtype)
        return out

    monkeypatch.setattr(BoltzmannPosterior, 'logits', spy)
    model.backbone.layers[0].attn.qkv.register_forward_hook(
        lambda m, i, o: matmul_dtypes.append(o.dtype))
    model.text_target.proj.register_forward_hook(
        lambda m, i, o: matmul_dtypes.append(o.dtype))
    views, samples = multisource_batch()
    for _ in range(2):
        log = model.train_step(dict(inputs=views, data_samples=samples),
                               wrapper)
    assert set(matmul_dtypes) == {torch.bfloat16}
    assert logits_dtypes and set(logits_dtypes) == {torch.float32}
    assert {'loss_cls', 'loss_text', 'loss_img_first'} <= set(log)
    assert all(torch.isfinite(v) for v in log.values())
    balancer = model.loss_balancer
    assert balancer.pending_norms.dtype == torch.float32
    assert float(balancer.weight) != 1.0 and int(balancer.num_skipped) == 0
    ema = model.image_target.ema.module.patch_embed.projection.weight
    assert ema.dtype == torch.float32
    assert not torch.equal(
        ema, model.backbone.patch_embed.projection.weight)


def test_internimage_dcnv3_under_bf16_autocast():
    torch.manual_seed(0)
    model = InternImage(
        arch=dict(channels=16, depths=[1, 1, 2, 1], groups=[2, 2, 4, 4]),
        out_indices=(4, ))
    x = torch.randn(2, 3, 64, 64)
    reference = model(x)[0]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)[0]
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), reference, atol=0.1, rtol=0.05)
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    dcn = next(m for m in model.modules() if isinstance(m, DCNv3))
    assert dcn.offset.weight.grad.abs().sum() > 0  # sampling is trained
