# InternImage-T classification on the demo digits, on CPU (the DCNv3 core
# runs its pure-PyTorch path without the CUDA extension). 32x32 inputs reach
# stage 4 at 1x1; a few hundred iterations are enough to learn the digits.
_base_ = [
    '../../_base_/models/internimage-t.py',
    '../../_base_/datasets/demo_digits.py',
    '../../_base_/schedules/demo_cpu.py',
    '../../_base_/default_runtime.py',
]
model = dict(backbone=dict(drop_path_rate=0.0))
train_dataloader = dict(batch_size=32)
optim_wrapper = dict(
    optimizer=dict(lr=5e-4),
    paramwise_cfg=dict(custom_keys={}))
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(
        type='DurableCheckpointHook', by_epoch=False, interval=100))
log_processor = dict(by_epoch=False)
