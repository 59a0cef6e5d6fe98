"""Load checkpoints through m3i_mm's loading paths; report each outcome.

Run by the checkpoint-safety tests in a subprocess::

    python tests/checkpoint_probe.py GROUPS_JSON

``GROUPS_JSON`` is a list of groups, each a list of ``[loader, source]``
jobs (loaders below). The process imports everything once, then runs each
group in a forked child, so a loader that crashes the interpreter ends only
its child and the test sees how. Per job one JSON line
``{"group", "job", "loader", "source", "error": type name or null,
"message", "rss_mib": peak RSS growth during the job}``; per group
``{"group", "exit": the child's exit code, or minus the signal}``.
"""
import json
import os
import os.path as osp
import resource
import sys
import tempfile

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, osp.join(REPO, 'tests'))

import m3i_mm  # noqa: E402,F401
import torch  # noqa: E402
from mmengine.runner.checkpoint import (CheckpointLoader,  # noqa: E402
                                        _load_checkpoint)

from conftest import TINY_ARCH, load_script  # noqa: E402
from m3i_mm.engine.checkpoint import load_checkpoint_file  # noqa: E402


def _pretrained(source):
    """``init_cfg=dict(type='Pretrained', checkpoint=source)``."""
    from mmengine.model import BaseModule

    class Net(BaseModule):

        def __init__(self):
            super().__init__(init_cfg=dict(type='Pretrained',
                                           checkpoint=source))
            self.w = torch.nn.Linear(2, 2)

    Net().init_weights()


def _frozen_target(source):
    from mmpretrain.registry import MODELS
    backbone = MODELS.build(dict(type='VisionTransformer', arch=TINY_ARCH,
                                 img_size=16, patch_size=4,
                                 out_type='featmap'))
    MODELS.build(dict(type='FrozenImageTarget', checkpoint=source,
                      backbone=backbone)).init_weights()


def _discrete_tokens(source):
    from mmpretrain.registry import MODELS
    MODELS.build(dict(type='DiscreteTokenTarget', checkpoint=source,
                      tokenizer=dict(
                          type='VQKD', num_embed=11, embed_dims=8,
                          quantize_kmeans_init=False,
                          encoder_config=dict(arch=TINY_ARCH, img_size=16,
                                              patch_size=4,
                                              out_type='featmap'))
                      )).init_weights()


def _converter(script):

    def run(source):
        out = osp.join(tempfile.mkdtemp(), 'converted.pth')
        load_script('tools', 'model_converters', script).main([source, out])
        assert not osp.exists(out) or os.path.getsize(out) > 0

    return run


LOADERS = {
    'load_checkpoint_file': lambda s: load_checkpoint_file(s, 'cpu'),
    # Runner.resume, Runner.load_checkpoint (load_from, tools/test.py).
    '_load_checkpoint': lambda s: _load_checkpoint(s, map_location='cpu'),
    'CheckpointLoader': lambda s: CheckpointLoader.load_checkpoint(s),
    'Pretrained': _pretrained,
    'FrozenImageTarget': _frozen_target,
    'DiscreteTokenTarget': _discrete_tokens,
    'internimage_official_to_m3i': _converter('internimage_official_to_m3i.py'),
    'm3i_to_downstream': _converter('m3i_to_downstream.py'),
}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_group(group: int, jobs) -> None:
    for i, (loader, source) in enumerate(jobs):
        before = _rss_mib()
        error = message = None
        try:
            LOADERS[loader](source)
        except Exception as err:  # reported, judged by the test
            error, message = type(err).__name__, str(err)
        print(json.dumps(dict(group=group, job=i, loader=loader,
                              source=source, error=error, message=message,
                              rss_mib=_rss_mib() - before)), flush=True)


def main(groups) -> None:
    for group, jobs in enumerate(groups):
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                run_group(group, jobs)
            finally:
                sys.stdout.flush()
                os._exit(0)
        status = os.waitpid(pid, 0)[1]
        code = (-os.WTERMSIG(status) if os.WIFSIGNALED(status) else
                os.WEXITSTATUS(status))
        print(json.dumps(dict(group=group, exit=code)), flush=True)


if __name__ == '__main__':
    main(json.loads(sys.argv[1]))
