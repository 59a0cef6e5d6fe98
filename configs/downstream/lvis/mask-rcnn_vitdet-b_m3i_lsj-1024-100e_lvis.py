# Mask R-CNN with an M3I ViT-B/16 as ViTDet backbone on LVIS v1 (paper
# Table 11): the COCO recipe of
# ../coco/mask-rcnn_vitdet-b_m3i_lsj-1024-100e_coco.py (large-scale jitter at
# 1024, 100 epochs at batch 64, AdamW (0.9, 0.999), step schedule, 250
# warm-up iterations, weight decay 0.1, drop path 0.1, relative position
# embeddings, layer-wise lr decay 0.7 = our choice, as ViTDet) with peak
# lr 2e-4 on mmdet's LVISV1Dataset (1203 classes). Same converted weights.
#
# Long-tail settings of ViTDet's LVIS config: a federated sigmoid
# classification loss (m3i_mm FederatedSigmoidLoss: 50 classes per batch,
# negatives drawn with weight image_count ** 0.5; mmdet has no such loss),
# repeat factor sampling with threshold 1e-3 (mmengine's
# ClassBalancedDataset), up to 300 detections per image with score
# threshold 0.02, LVISMetric (box and mask AP, the `lvis` package). The loss
# reads the class image counts from lvis_v1_train.json (a 1 GB file) in the
# first training step; pass class_image_counts=[...] instead to skip it.
#
# 100 epochs of LVIS v1 train (100k images) at batch 64 = 156250
# iterations; the lr drops x0.1 at the same fractions as on COCO (ViTDet's
# iterations 138889 and 150463).
_base_ = ['../coco/mask-rcnn_vitdet-b_m3i_lsj-1024-100e_coco.py']
num_classes = 1203
dataset_type = 'LVISV1Dataset'
data_root = 'data/lvis_v1/'
model = dict(
    roi_head=dict(
        bbox_head=dict(
            num_classes=num_classes,
            loss_cls=dict(
                _delete_=True,
                type='FederatedSigmoidLoss',
                num_classes=num_classes,
                ann_file=data_root + 'annotations/lvis_v1_train.json',
                num_fed_classes=50,
                freq_weight_power=0.5)),
        mask_head=dict(num_classes=num_classes)),
    test_cfg=dict(rcnn=dict(score_thr=0.02, max_per_img=300)))
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='ClassBalancedDataset',
        oversample_thr=1e-3,
        dataset=dict(
            type=dataset_type,
            data_root=data_root,
            ann_file='annotations/lvis_v1_train.json',
            data_prefix=dict(img=''),
            filter_cfg=dict(filter_empty_gt=True, min_size=32),
            pipeline={{_base_.train_pipeline}})))
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/lvis_v1_val.json',
        data_prefix=dict(img='')))
test_dataloader = val_dataloader
val_evaluator = dict(
    _delete_=True,
    type='LVISMetric',
    ann_file=data_root + 'annotations/lvis_v1_val.json',
    metric=['bbox', 'segm'])
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(lr=2e-4))
max_iters = 156250
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.001,
        by_epoch=False,
        begin=0,
        end=250),
    dict(
        type='MultiStepLR',
        by_epoch=False,
        begin=0,
        end=max_iters,
        milestones=[138889, 150463],
        gamma=0.1)
]
train_cfg = dict(max_iters=max_iters, val_interval=15625)
default_hooks = dict(checkpoint=dict(interval=15625))
