# m3i_internimage-h.py sharded over all ranks, bf16 compute (see
# ../_base_/sharding/fsdp_bf16.py): each rank keeps 1/N of the fp32 weights,
# gradients, AdamW state and momentum encoder (benchmarks/memory.py, 8 ranks:
# 21.4 -> 2.9 GiB per rank). Activation checkpointing: InternImage's with_cp
# (base) and the image decoder's.
_base_ = ['./m3i_internimage-h.py', '../_base_/sharding/fsdp_bf16.py']
model = dict(image_decoder=dict(with_cp=True))
# The base's fp16 autocast and loss scaler replaced by a plain fp32 wrapper.
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer={{_base_.optim_wrapper.optimizer}},
                     paramwise_cfg={{_base_.optim_wrapper.paramwise_cfg}},
                     clip_grad={{_base_.optim_wrapper.clip_grad}})
