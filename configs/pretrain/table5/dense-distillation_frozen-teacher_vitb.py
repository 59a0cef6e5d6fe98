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
    # The teacher gets its own preprocessing, as FD and MILAN feed CLIP:
    # the target view before photometric augmentation (crop, resize, flip),
    # resized to 224 and normalised with CLIP's mean/std (OpenAI CLIP's
    # preprocess, Normalize((0.48145466, 0.4578275, 0.40821073),
    # (0.26862954, 0.26130258, 0.27577711)), here x 255); source_mean/std
    # undo the student's normalisation (the data preprocessor's).
    data_preprocessor=dict(geometric_target_view=True),
    image_target=dict(
        _delete_=True,
        type='FrozenImageTarget',
        checkpoint='checkpoints/teacher.pth',
        prefix='backbone.',
        output='dense',
        geometric_view=True,
        size=224,
        mean=[122.7709383, 116.7460125, 104.09373615],
        std=[68.5005327, 66.6321579, 70.32316805],
        source_mean={{_base_.model.data_preprocessor.mean}},
        source_std={{_base_.model.data_preprocessor.std}}))
