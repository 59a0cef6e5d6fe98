"""``import m3i_mm`` is a good neighbour: it replaces few upstream attributes.

Every product feature reaches mmengine, mmpretrain, mmdet and mmseg through
their extension points (registries, a runner chosen by ``runner_type``,
hooks, ``CheckpointLoader.register_scheme``); what is left replaced are the
shims for upstream bugs of ``m3i_mm/compat.py``, each listed here with its
reason (README, "Upstream fixes").
"""
import json
import os
import subprocess
import sys

from conftest import REPO

SNAPSHOT = os.path.join(REPO, 'tests', 'upstream_snapshot.py')

# Every upstream attribute ``import m3i_mm`` may replace or add, and why.
EXPECTED = {
    # onedl-mmengine 0.10.12: print_log(level=DEBUG) without a logger prints
    # unconditionally (OneDL's mmdet/mmseg/mmpretrain debug messages).
    'mmengine.logging.print_log': 'debug messages printed',
    'mmengine.logging.logger.print_log': 'debug messages printed',
    # numpy 2 removed names that imgaug 0.4 / lvis 0.5.3 / mmdet 3.3 use.
    'numpy.float': 'numpy 2 alias',
    'numpy.sctypes': 'numpy 2 alias',
    # The door itself: register_scheme rebuilds this table on every call.
    'mmengine.runner.checkpoint.CheckpointLoader._schemes':
    'CheckpointLoader.register_scheme',
}


def _run(*args) -> list:
    out = subprocess.run([sys.executable, SNAPSHOT, *args], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=REPO),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_replaces_at_most_six_upstream_attributes():
    """Walk the upstream modules ``import m3i_mm`` loads (mmengine, mmcv,
    mmpretrain, mmdet, mmseg, torch.utils.data, numpy) before and after the
    import in a fresh process."""
    modules = _run('--list')
    assert len(modules) > 500  # the walk sees the upstream packages
    changed = _run(json.dumps(modules))
    assert set(changed) == set(EXPECTED), sorted(set(changed) ^ set(EXPECTED))
    assert len(changed) <= 6


def test_plain_mmpretrain_config_runs_as_without_m3i(tmp_path, demo_root):
    """A config that does not use m3i_mm, run in a process that imported
    it, trains, checkpoints and validates exactly as without it: the same
    runner and hooks, Accuracy, files and checkpoint contents."""
    script = os.path.join(REPO, 'tests', 'plain_mmpretrain_run.py')
    runs = {}
    for flag in ('', '--import-m3i'):
        work = tmp_path / (flag or 'plain')
        out = subprocess.run(
            [sys.executable, script, str(work), demo_root, flag], cwd=REPO,
            env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
            text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[flag] = json.loads(out.stdout.strip().splitlines()[-1])
    plain, with_m3i = runs[''], runs['--import-m3i']
    assert plain['runner'] == 'Runner' and 'CheckpointHook' in plain['hooks']
    assert with_m3i == plain
