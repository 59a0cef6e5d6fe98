# m3i_vitl.py sharded over all ranks, bf16 compute (see
# ../_base_/sharding/fsdp_bf16.py), activation checkpointing of the ViT
# layers and of the image decoder.
_base_ = ['./m3i_vitl.py', '../_base_/sharding/fsdp_bf16.py']
model = dict(
    backbone=dict(type='CheckpointedVisionTransformer', with_cp=True),
    image_decoder=dict(with_cp=True))
# The base's fp16 autocast and loss scaler replaced by a plain fp32 wrapper.
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer={{_base_.optim_wrapper.optimizer}},
                     paramwise_cfg={{_base_.optim_wrapper.paramwise_cfg}},
                     clip_grad={{_base_.optim_wrapper.clip_grad}})
