# Supervised tiny ViT on the demo digits: proves data -> model -> checkpoint
# -> evaluation on CPU in about a minute.
_base_ = [
    '../_base_/models/vit-tiny_demo.py',
    '../_base_/datasets/demo_digits.py',
    '../_base_/schedules/demo_cpu.py',
    '../_base_/default_runtime.py',
]
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(
        type='DurableCheckpointHook', by_epoch=False, interval=100))
log_processor = dict(by_epoch=False)
