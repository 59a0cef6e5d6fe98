"""Train and validate a plain mmpretrain config (no m3i_mm in it).

    python tests/plain_mmpretrain_run.py WORK_DIR DATA_ROOT [--import-m3i]

With ``--import-m3i`` the process imports m3i_mm first, as any process that
loads the plugin for another config does. Prints, as JSON, the validation
metrics, mmpretrain's ``Accuracy`` on tied scores, the files of the work dir and, per checkpoint, a summary of its
pickled structure (types of every value, tensors' digests, the meta's
keys).
"""
import hashlib
import json
import os
import sys

import torch


def structure(value):
    """A JSON description of a loaded checkpoint: container layout, type
    names, tensor and array digests."""
    import numpy as np
    if isinstance(value, dict):
        return {'type': type(value).__name__,
                'items': {str(k): structure(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {'type': type(value).__name__,
                'items': [structure(v) for v in value]}
    if isinstance(value, torch.Tensor):
        return {'tensor': hashlib.sha1(value.numpy().tobytes()).hexdigest()}
    if isinstance(value, np.ndarray):  # logged times differ between runs
        return {'array': [value.dtype.str, value.shape]}
    if hasattr(value, '__dict__') and not isinstance(value, type):
        return {'type': type(value).__name__,
                'state': structure(dict(vars(value)))}
    return {'type': type(value).__name__}


def main(work_dir: str, data_root: str, import_m3i: bool) -> None:
    if import_m3i:
        import m3i_mm  # noqa: F401
    torch.set_num_threads(1)
    from mmengine.config import Config
    from mmengine.runner import Runner
    pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
    loader = dict(batch_size=8, num_workers=0,
                  sampler=dict(type='DefaultSampler', shuffle=False),
                  dataset=dict(type='CustomDataset', data_root=data_root,
                               data_prefix='val', pipeline=pipeline))
    cfg = Config(dict(
        default_scope='mmpretrain',
        work_dir=work_dir,
        model=dict(
            type='ImageClassifier',
            data_preprocessor=dict(num_classes=10, mean=[127.5] * 3,
                                   std=[127.5] * 3),
            backbone=dict(type='VisionTransformer', img_size=32,
                          patch_size=8, out_type='cls_token',
                          arch=dict(embed_dims=32, num_layers=1,
                                    num_heads=2, feedforward_channels=64)),
            head=dict(type='VisionTransformerClsHead', num_classes=10,
                      in_channels=32,
                      loss=dict(type='CrossEntropyLoss'))),
        train_dataloader=loader, val_dataloader=loader,
        val_evaluator=dict(type='Accuracy', topk=(1, 5)),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=4,
                       val_interval=4),
        val_cfg=dict(),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', by_epoch=False,
                            interval=2, max_keep_ckpts=1),
            logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0),
        log_level='WARNING'))
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.val()
    files = sorted(name for name in os.listdir(work_dir)
                   if not name[0].isdigit())  # not the timestamped log dir
    checkpoints = {}
    for name in files:
        if name.endswith('.pth'):
            saved = torch.load(os.path.join(work_dir, name),
                               weights_only=False)
            saved['meta'] = sorted(saved['meta'])  # times, names differ
            checkpoints[name] = structure(saved)
    with open(os.path.join(work_dir, 'last_checkpoint')) as f:
        last = os.path.basename(f.read().strip())
    from mmpretrain.evaluation import Accuracy
    tied = Accuracy.calculate(torch.zeros(4, 3), torch.tensor([0, 1, 2, 2]))
    print(json.dumps(dict(metrics=metrics, tied=float(tied[0][0]),
                          files=files, last=last,
                          checkpoints=checkpoints, runner=type(runner).__name__,
                          hooks=[type(h).__name__ for h in runner.hooks])))


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2], '--import-m3i' in sys.argv)
