# m3i_internimage-h.py sharded over all ranks (M3IFullyShardWrapper, torch
# FSDP2): each rank keeps 1/W of the fp32 weights, gradients, AdamW state and
# momentum encoder (benchmarks/memory.py, 8 ranks: 21.2 -> 2.9 GiB per rank).
# bf16 compute through FSDP2's mixed precision (fp32 master weights, fp32
# gradient reduction) instead of autocast: a plain fp32 optimizer wrapper,
# no loss scaler. Activation checkpointing: InternImage's with_cp (base) and
# the image decoder's.
_base_ = ['./m3i_internimage-h.py']
model = dict(image_decoder=dict(with_cp=True))
model_wrapper_cfg = dict(
    type='M3IFullyShardWrapper',
    mp_policy=dict(param_dtype='bfloat16', reduce_dtype='float32'))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer={{_base_.optim_wrapper.optimizer}},
    paramwise_cfg={{_base_.optim_wrapper.paramwise_cfg}},
    clip_grad={{_base_.optim_wrapper.clip_grad}})
