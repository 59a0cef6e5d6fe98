# Runtime shared by every m3i_mm config (mmpretrain's defaults + our plugin).
custom_imports = dict(imports=['m3i_mm'], allow_failed_imports=False)
default_scope = 'mmpretrain'
# m3i_mm's Runner (m3i_mm.engine.M3IRunner): strict load_from, safe automatic
# resume, per-sample seeds, CPU launcher. mmpretrain's, mmdet's and mmseg's
# tools/train.py build it too.
runner_type = 'M3IRunner'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # Atomic writes; a kill at any moment keeps the last checkpoint.
    checkpoint=dict(
        type='DurableCheckpointHook', interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False),
    # Stops at a NaN/inf loss or parameter before it reaches a checkpoint.
    finite_check=dict(type='FiniteCheckHook'),
    # Random draws seeded from (seed, rank, iteration / sample position):
    # a resumed run draws what the uninterrupted one drew (m3i_mm).
    randomness=dict(type='ResumableRandomnessHook'),
    # SIGTERM / SIGUSR1 (e.g. srun --signal=USR1@180): finish the
    # iteration, save, exit with code 75 (m3i_mm); --resume continues.
    preemption=dict(type='PreemptionHook', signals=('SIGTERM', 'SIGUSR1')),
)

custom_hooks = [
    # λ's measurement averaged over ranks before a checkpoint (no-op
    # otherwise).
    dict(type='GradientNormSyncHook'),
    # Checkpoints as plain data: they load with torch.load(weights_only=True).
    dict(type='PlainCheckpointHook'),
]

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)

# scalars.json (tools/plot_run.py) and TensorBoard event files, both in
# WORK_DIR/TIMESTAMP/vis_data: tensorboard --logdir WORK_DIR
vis_backends = [
    dict(type='LocalVisBackend'),
    dict(type='TensorboardVisBackend')
]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)

log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
