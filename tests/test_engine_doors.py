"""The run's features come through mmengine's doors (``M3IRunner``,
``DurableCheckpointHook``, the ``durable_local`` file backend,
``CPUAwareAmpOptimWrapper``): ``import m3i_mm`` leaves the upstream engine
as it is, so other configs of the same process run unchanged."""
import os
import subprocess
import sys

from conftest import REPO

# The upstream attributes m3i_mm once replaced for these features.
UNTOUCHED = {
    'mmengine.hooks.CheckpointHook':
    ['_save_checkpoint_with_step', 'before_train', '_save_best_checkpoint'],
    'mmengine.runner.Runner': ['load_checkpoint', 'build_dataloader'],
    'mmengine.runner._flexible_runner.FlexibleRunner': ['build_dataloader'],
    'mmengine.runner': ['find_latest_checkpoint'],
    'mmengine.runner.checkpoint': ['find_latest_checkpoint'],
    'mmengine.runner.runner': ['find_latest_checkpoint'],
    'mmengine.runner._flexible_runner': ['find_latest_checkpoint'],
    'mmengine.fileio.backends.local_backend.LocalBackend': ['put', 'put_text'],
    'mmengine.optim.DefaultOptimWrapperConstructor': ['__init__'],
    'mmengine.optim.AmpOptimWrapper': ['__init__'],
    'mmengine.model.wrappers.MMDistributedDataParallel': ['__init__'],
    'mmengine.dist.utils': ['_init_dist_pytorch'],
    'torch.utils.data._utils.fetch._MapDatasetFetcher': ['fetch'],
}

SCRIPT = f'''
import importlib
untouched = {UNTOUCHED!r}

def lookup(path):
    try:
        return importlib.import_module(path)
    except ImportError:
        module, name = path.rsplit('.', 1)
        return getattr(lookup(module), name)

def snapshot():
    return {{(path, name): vars(lookup(path))[name]
            for path, names in untouched.items() for name in names}}

before = snapshot()
import m3i_mm
after = snapshot()
print(sorted(f'{{p}}.{{n}}' for (p, n), v in before.items()
             if after[(p, n)] is not v))
'''


def test_import_replaces_no_engine_attribute():
    res = subprocess.run([sys.executable, '-c', SCRIPT], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=REPO),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == '[]'
