# Demo twin of m3i_vitb_wo-ft_in1k.py: the demo M3I (m3i_vit-tiny_demo.py)
# classifies the 359 demo val digits with its category head, no
# fine-tuning:
#   python tools/test.py configs/downstream/imagenet/m3i_vit-tiny_wo-ft_demo.py \
#       work_dirs/m3i_vit-tiny_demo/iter_800.pth
_base_ = ['../../pretrain/m3i_vit-tiny_demo.py']
test_dataloader = dict(
    batch_size=128,
    num_workers=0,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset={{_base_.monitor_dataloader.dataset}})
test_evaluator = dict(type='TieAwareAccuracy', topk=(1, 5))
test_cfg = dict()
