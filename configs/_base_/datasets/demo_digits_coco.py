# Detection / instance segmentation on the embedded demo canvases in the
# COCO layout (m3i_mm.datasets.demo.detection.DemoDigitsCoco, a
# CocoDataset): 200 train / 50 val 96x96 canvases, 390 / 97 digit instances,
# 10 categories (zero ... nine), masks as RLE.
dataset_type = 'DemoDigitsCoco'
data_root = 'data/demo_digits_coco'

# No flips: mirrored digits are other symbols.
train_pipeline = [
    dict(type='NamedLoadImageFromFile'),
    dict(type='NamedLoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor')),
]

train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='val',
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + '/annotations/instances_val.json',
    metric=['bbox', 'segm'])
test_evaluator = val_evaluator
