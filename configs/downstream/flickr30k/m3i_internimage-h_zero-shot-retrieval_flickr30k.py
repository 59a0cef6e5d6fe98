# Flickr30K zero-shot image-text retrieval (paper App. B.4, "following the
# setting of BEiT-3": 89.1 R@1 against BEiT-3's 88.2, which is the mean of
# image->text and text->image R@1, (94.9 + 81.5) / 2). The pre-trained
# model with text targets (the 1B multi-source InternImage-H) embeds each
# image through its text head and each caption through its text target
# encoder (M3I's mode='predict'); ImageTextRetrieval reports i2t / t2i
# R@1/5/10 over the 1k test images and their 5k captions of Karpathy's
# split (dataset_flickr30k.json, read by mmpretrain's Flickr30kRetrieval):
#   python tools/test.py \
#       configs/downstream/flickr30k/m3i_internimage-h_zero-shot-retrieval_flickr30k.py \
#       work_dirs/m3i_internimage-h_multisource/CHECKPOINT.pth
# Images: resized to the pre-training resolution (square, bicubic, no crop,
# as BEiT-3 / BLIP's retrieval evaluation).
_base_ = ['../../pretrain/m3i_internimage-h_multisource.py']
img_size = {{_base_.img_size}}
test_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='mmpretrain.Flickr30kRetrieval',
        data_root='data/flickr30k',
        ann_file='annotations/dataset_flickr30k.json',
        data_prefix='flickr30k-images',
        split='test',
        test_mode=True,
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=(img_size, img_size),
                 interpolation='bicubic'),
            dict(type='PackInputs', meta_keys=['image_id', 'text']),
        ]))
test_evaluator = dict(type='ImageTextRetrieval', topk=(1, 5, 10))
test_cfg = dict()
