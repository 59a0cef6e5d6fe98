# m3i_vitb.py with the photometric augmentation of the views done per image
# in the data workers (the path before the batched one; same distributions,
# about 3x the CPU time per image: see README, "Input pipeline").
_base_ = ['./m3i_vitb.py']

model = dict(data_preprocessor=dict(view_transforms=None))
train_dataloader = dict(
    dataset=dict(pipeline={{_base_.per_image_pipeline}}))
