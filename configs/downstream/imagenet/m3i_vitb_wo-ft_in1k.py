# Table 4, "ImageNet w/o fine-tuning": the pre-trained M3I ViT-B/16
# (m3i_vitb.py) classifies ImageNet val with its category head against its
# category embeddings (M3I's mode='predict', the category posterior's
# softmax), no fine-tuning. Evaluate the pre-training checkpoint as is:
#   python tools/test.py configs/downstream/imagenet/m3i_vitb_wo-ft_in1k.py \
#       work_dirs/m3i_vitb/epoch_1600.pth
# Images: resized (short side 256, bicubic) and centre-cropped to 224, as
# the pre-training config's held-out monitor split.
_base_ = ['../../pretrain/m3i_vitb.py']
test_dataloader = dict(
    batch_size=256,
    num_workers=8,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset={{_base_.monitor_dataloader.dataset}})
test_evaluator = dict(type='TieAwareAccuracy', topk=(1, 5))
test_cfg = dict()
