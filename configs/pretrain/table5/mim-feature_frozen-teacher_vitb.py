# Table 5, "Masked Image Modeling (feature)" with a pre-trained, frozen
# target encoder (MILAN-like): input = masked view 1, target = dense
# features of the full view 1 from a fixed checkpoint (see
# dense-distillation_frozen-teacher_vitb.py for the options).
_base_ = './mim-feature_vitb.py'
model = dict(
    image_target=dict(
        _delete_=True,
        type='FrozenImageTarget',
        checkpoint='checkpoints/teacher.pth',
        prefix='backbone.',
        output='dense'))
