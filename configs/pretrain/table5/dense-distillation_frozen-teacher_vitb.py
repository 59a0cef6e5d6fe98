# Table 5, "Dense Distillation" with a pre-trained, frozen target encoder
# (FD-like; the BEiT v2 tokenizer's teacher): input = view 1, target = dense
# features of view 1 from a fixed checkpoint (no EMA, no gradients),
# posterior = Gaussian. Set the teacher with
#   --cfg-options model.image_target.checkpoint=PATH
# (prefix 'backbone.' reads an M3I / mmpretrain checkpoint's encoder,
# 'image_target.ema.module.' an M3I checkpoint's momentum encoder, '' a bare
# backbone state dict; model.image_target.encoder=dict(...) for a teacher
# architecture other than the student's).
_base_ = './dense-distillation_vitb.py'
model = dict(
    image_target=dict(
        _delete_=True,
        type='FrozenImageTarget',
        checkpoint='checkpoints/teacher.pth',
        prefix='backbone.',
        output='dense'))
