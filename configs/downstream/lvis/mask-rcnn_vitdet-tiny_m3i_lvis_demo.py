# The LVIS recipe of mask-rcnn_vitdet-b_m3i_lsj-1024-100e_lvis.py (federated
# sigmoid classification loss, repeat factor sampling, up to 300 detections
# per image, LVIS box and mask AP with APr / APc / APf) on the long-tailed
# demo canvases (m3i_mm.datasets.demo.lvis, LVIS v1 layout, 10 digit
# classes: 3 frequent, 4 common, 3 rare), with the tiny ViTDet and CPU
# schedule of ../coco/mask-rcnn_vitdet-tiny_m3i_demo.py.
#
# Scaled to 10 classes: the federated loss uses 4 of the 11 classes per
# batch (LVIS: 50 of 1204) and repeat factor sampling threshold 0.1 (LVIS:
# 1e-3 over 100k images; here it repeats the rare digits' canvases about
# 2-3x). The class image counts are those of the demo's
# annotations/lvis_v1_train.json, listed because the model is built before
# the demo data is written.
_base_ = ['../coco/mask-rcnn_vitdet-tiny_m3i_demo.py']
num_classes = 10
data_root = 'data/demo_digits_lvis'

model = dict(
    roi_head=dict(
        bbox_head=dict(
            loss_cls=dict(
                _delete_=True,
                type='FederatedSigmoidLoss',
                num_classes=num_classes,
                class_image_counts=[105, 104, 112, 57, 38, 25, 15, 8, 5, 3],
                num_fed_classes=4))),
    test_cfg=dict(rcnn=dict(score_thr=0.02, max_per_img=300)))

train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='ClassBalancedDataset',
        oversample_thr=0.1,
        dataset=dict(
            type='DemoDigitsLvis',
            data_root=data_root,
            split='train',
            filter_cfg=dict(filter_empty_gt=True, min_size=4),
            pipeline={{_base_.train_pipeline}})))
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='DemoDigitsLvis',
        data_root=data_root,
        split='val',
        test_mode=True,
        pipeline={{_base_.test_pipeline}}))
test_dataloader = val_dataloader
val_evaluator = dict(
    _delete_=True,
    type='LVISMetric',
    ann_file=data_root + '/annotations/lvis_v1_val.json',
    metric=['bbox', 'segm'])
test_evaluator = val_evaluator
