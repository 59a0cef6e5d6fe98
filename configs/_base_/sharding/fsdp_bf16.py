# Shard the model over all ranks (M3IFullyShardWrapper, torch FSDP2), bf16
# compute through FSDP2's mixed precision: fp32 master weights and gradient
# reduction. Pair it with a plain fp32 optimizer wrapper (no autocast, no
# loss scaler): see configs/pretrain/*_fsdp.py.
model_wrapper_cfg = dict(
    type='M3IFullyShardWrapper',
    mp_policy=dict(param_dtype='bfloat16', reduce_dtype='float32'))
