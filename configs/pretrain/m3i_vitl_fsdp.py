# m3i_vitl.py sharded over all ranks (M3IFullyShardWrapper, torch FSDP2),
# bf16 compute through FSDP2's mixed precision (fp32 master weights and
# gradient reduction, plain fp32 optimizer wrapper), activation
# checkpointing of the ViT layers and of the image decoder.
_base_ = ['./m3i_vitl.py']
model = dict(
    backbone=dict(type='CheckpointedVisionTransformer', with_cp=True),
    image_decoder=dict(with_cp=True))
model_wrapper_cfg = dict(
    type='M3IFullyShardWrapper',
    mp_policy=dict(param_dtype='bfloat16', reduce_dtype='float32'))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer={{_base_.optim_wrapper.optimizer}},
    paramwise_cfg={{_base_.optim_wrapper.paramwise_cfg}},
    clip_grad={{_base_.optim_wrapper.clip_grad}})
