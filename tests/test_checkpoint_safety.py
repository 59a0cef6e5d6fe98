"""Checkpoints are parsed, never executed (m3i_mm.engine.checkpoint).

Hostile files (``tests/fixtures/hostile_checkpoints.py``: code through
pickled calls, memory read/write at addresses taken from the file, a
2 GiB allocation, a 1 GiB DEFLATE record, objects hidden in slices and
tensors, an opcode torch.save never writes) go through every loading path
m3i_mm ships, local and by URL, each file's loads in a subprocess
(``tests/checkpoint_probe.py``) so that a crash fails the test instead of
the suite. A fuzz run mutates real checkpoints 2,000 times.
"""
import argparse
import collections
import json
import os
import os.path as osp
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import (CheckpointLoader, _load_checkpoint,
                                        get_external_models,
                                        get_torchvision_models)

from conftest import REPO, config_path, demo_loader_options, tiny_m3i
from m3i_mm.engine.checkpoint import (NotACheckpointError,
                                      UnsafeCheckpointError, from_plain,
                                      load_checkpoint_file, parse_checkpoint,
                                      to_plain)
from m3i_mm.engine.checkpoint.loader import SCHEMES

sys.path.insert(0, osp.join(REPO, 'tests', 'fixtures'))
import hostile_checkpoints  # noqa: E402

PROBE = osp.join(REPO, 'tests', 'checkpoint_probe.py')
FUZZ = osp.join(REPO, 'tests', 'checkpoint_fuzz.py')
# Peak memory a refused load may add (the 1 GiB record, the 2 GiB bytearray
# must not be allocated).
RSS_LIMIT_MIB = 200


@pytest.fixture(scope='module')
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp('hostile')
    marker = str(root / 'marker')
    return hostile_checkpoints.write_all(str(root / 'files'), marker), marker


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, **extra)
    env.pop('M3I_TRUST_CHECKPOINTS', None)
    return env


def _probe(groups, env=None):
    """Run ``groups`` of ``[loader, source]`` jobs, each group in a forked
    child of one probe process; returns the jobs' results, group by group.
    A group whose child crashed fails the test, naming the signal."""
    proc = subprocess.run([sys.executable, PROBE, json.dumps(groups)],
                          cwd=REPO, env=env or _env(), capture_output=True,
                          text=True, timeout=900)
    lines = [json.loads(line) for line in proc.stdout.splitlines()
             if line.startswith('{"group"')]
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = []
    for group, jobs in enumerate(groups):
        done = [r for r in lines if r['group'] == group and 'job' in r]
        exit_code = [r['exit'] for r in lines
                     if r['group'] == group and 'exit' in r]
        assert exit_code == [0] and len(done) == len(jobs), (
            f'the probe child died (exit {exit_code}) after '
            f'{len(done)}/{len(jobs)} loads; next: '
            f'{jobs[len(done)] if len(done) < len(jobs) else None}\n'
            f'{proc.stderr[-3000:]}')
        results.append(done)
    return results


def _assert_refused(result, path_text, named) -> None:
    what = (result['loader'], result['source'])
    assert result['error'] == 'UnsafeCheckpointError', (what, result)
    assert path_text in result['message'], (what, result['message'])
    assert named in result['message'], (what, named, result['message'])
    assert result['rss_mib'] < RSS_LIMIT_MIB, (what, result['rss_mib'])


def test_every_hostile_file_is_refused_on_every_loading_path(hostile):
    files, marker = hostile
    from checkpoint_probe import LOADERS
    groups = [[[loader, path] for loader in LOADERS] for path in files]
    for path, results in zip(files, _probe(groups)):
        for result in results:
            _assert_refused(result, path, files[path])
    assert not osp.exists(marker)


def _hub_urls():
    """URLs (and mmengine model-zoo names resolving to URLs) with the
    name their download gets in the hub cache."""
    url = 'https://example.invalid/models/m3i_evil.pth'
    torchvision = get_torchvision_models()['resnet18']
    openmmlab = get_external_models()['resnet50_v1c']
    return {url: url, 'torchvision://resnet18': torchvision,
            'open-mmlab://resnet50_v1c': openmmlab}


def test_url_checkpoints_are_downloaded_then_parsed(hostile, tmp_path):
    """A payload where a download lands (no network: the hub cache is
    filled) is refused through every path that takes a URL."""
    files, marker = hostile
    evil = [p for p in files if 'code_via_os_system' in p][0]
    torch_home = tmp_path / 'torch_home'
    cache = torch_home / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    jobs = []
    for name, url in _hub_urls().items():
        os.link(evil, cache / osp.basename(url))
        for loader in ('_load_checkpoint', 'CheckpointLoader', 'Pretrained',
                       'FrozenImageTarget', 'DiscreteTokenTarget',
                       'm3i_to_downstream'):
            jobs.append([loader, name])
    for result in _probe([jobs], _env(TORCH_HOME=str(torch_home)))[0]:
        _assert_refused(result, str(cache), files[evil])
    assert not osp.exists(marker)


def test_every_mmengine_scheme_is_served_by_the_parser():
    ours = set(SCHEMES.values())
    assert CheckpointLoader._schemes, 'no schemes registered'
    for prefix, loader in CheckpointLoader._schemes.items():
        assert loader in ours, (prefix, loader)


def test_command_lines_refuse_hostile_files(hostile, tmp_path, demo_root):
    """tools/train.py (load_from a URL, --resume a file, auto-resume from
    the work dir) and tools/test.py, as users start them, in parallel."""
    files, marker = hostile
    by_name = {osp.basename(p)[:-4]: p for p in files}
    code, memory = by_name['code_via_os_system'], by_name[
        'read_address_via_history_buffer']
    torch_home = tmp_path / 'torch_home'
    cache = torch_home / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    url = 'https://example.invalid/models/m3i_evil.pth'
    os.link(code, cache / 'm3i_evil.pth')
    auto = tmp_path / 'auto'
    auto.mkdir()
    os.link(memory, auto / 'iter_1.pth')
    (auto / 'last_checkpoint').write_text(str(auto / 'iter_1.pth'))
    config = config_path('demo', 'vit-tiny_sup_demo.py')
    data = demo_loader_options(
        demo_root, ('train_dataloader', 'val_dataloader', 'test_dataloader'))
    one = 'train_cfg.max_iters=1'
    commands = {
        'load_from URL': (['tools/train.py', config, '--work-dir',
                           str(tmp_path / 'a'), '--cfg-options',
                           f'load_from={url}', one, *data], cache),
        '--resume FILE': (['tools/train.py', config, '--work-dir',
                           str(tmp_path / 'b'), '--resume', memory,
                           '--cfg-options', one, *data], memory),
        'auto-resume': (['tools/train.py', config, '--work-dir', str(auto),
                         '--resume', '--cfg-options', one, *data],
                        str(auto / 'iter_1.pth')),
        'test': (['tools/test.py', config, code, '--cfg-options', *data],
                 code),
    }
    env = _env(TORCH_HOME=str(torch_home))
    procs = {
        name: subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env,
                               stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        for name, (argv, _) in commands.items()
    }
    for name, proc in procs.items():
        output = proc.communicate(timeout=600)[0]
        assert proc.returncode == 1, (name, proc.returncode, output[-2000:])
        assert 'UnsafeCheckpointError' in output, (name, output[-2000:])
        assert str(commands[name][1]) in output, (name, output[-2000:])
    assert not osp.exists(marker)


def _real_checkpoints(tmp_path):
    """Real checkpoints of every kind m3i_mm reads: a pre-training one as
    mmengine writes it (message hub of HistoryBuffers, AdamW state), the
    same as m3i_mm writes it (plain), a converter output, numpy 1's."""
    from mmengine.runner import save_checkpoint
    from conftest import load_script
    model = tiny_m3i()
    optimizer = torch.optim.AdamW(model.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    hub = MessageHub('fuzz')
    for step in range(5):
        hub.update_scalar('train/loss', 1.0 / (step + 1))
        hub.update_scalar('train/lr', np.float32(0.1))
    hub.update_info('iter', 5)
    checkpoint = dict(meta=dict(epoch=0, iter=5, seed=0, cfg='x = 1'),
                      state_dict=model.state_dict(),
                      optimizer=optimizer.state_dict(),
                      message_hub=hub.state_dict(),
                      param_schedulers=[dict(base_values=[1e-3], last_step=5)])
    paths = {'mmengine': tmp_path / 'mmengine.pth',
             'plain': tmp_path / 'plain.pth',
             'converted': tmp_path / 'converted.pth',
             'numpy1': tmp_path / 'numpy1.pth'}
    torch.save(checkpoint, paths['mmengine'])
    torch.save(to_plain(checkpoint), paths['plain'])
    converter = load_script('tools', 'model_converters', 'm3i_to_downstream.py')
    save_checkpoint(dict(state_dict=converter.convert(checkpoint)),
                    str(paths['converted']))
    with open(osp.join(REPO, 'tests', 'fixtures', 'numpy1_checkpoint.pkl'),
              'rb') as f:
        _torch_archive(f.read(), paths['numpy1'])
    return {name: str(path) for name, path in paths.items()}


def test_real_checkpoints_of_every_kind_load(tmp_path):
    paths = _real_checkpoints(tmp_path)
    mmengine = parse_checkpoint(paths['mmengine'], 'cpu')
    buffer = mmengine['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer) and buffer.current() == 0.2
    assert mmengine['message_hub']['log_scalars']['train/lr'].current(
    ) == np.float32(0.1)
    plain = torch.load(paths['plain'], weights_only=True)  # torch's defaults
    restored = from_plain(plain)['message_hub']['log_scalars']['train/loss']
    assert np.array_equal(restored._log_history, buffer._log_history)
    assert restored._log_history.dtype == buffer._log_history.dtype
    for key, value in mmengine['state_dict'].items():
        assert torch.equal(value, plain['state_dict'][key]), key
    assert parse_checkpoint(paths['converted'])['state_dict']
    assert parse_checkpoint(paths['numpy1'])['scalars']['int16'] == 3


def test_fuzzed_checkpoints_raise_only_named_errors(tmp_path):
    """2,000 mutations of real checkpoints (fixed seed) in 2 subprocess
    batches: no crash, no code, every failure a named one."""
    bases = list(_real_checkpoints(tmp_path).values())
    procs = [
        subprocess.Popen([sys.executable, FUZZ, '17', str(start), '1000',
                          *bases], cwd=REPO, env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True) for start in (0, 1000)
    ]
    outcomes = collections.Counter()
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        lines = [json.loads(line) for line in out.splitlines()]
        assert proc.returncode == 0 and len(lines) == 1000, (
            f'fuzz batch died (rc {proc.returncode}) after '
            f'{lines[-1]["i"] if lines else None}: {err[-2000:]}')
        for line in lines:
            outcomes[(line['kind'], line['outcome'])] += 1
    allowed = {'ok', 'UnsafeCheckpointError', 'NotACheckpointError'}
    bad = {k: n for k, n in outcomes.items() if k[1] not in allowed}
    assert not bad, bad
    assert sum(outcomes.values()) == 2000
    # The pickle reader itself was exercised, not only the CRC check.
    assert sum(n for (kind, outcome), n in outcomes.items()
               if kind.startswith('pkl') and outcome == 'UnsafeCheckpointError'
               ) > 300, outcomes


def test_plain_torch_load_in_another_thread_keeps_torch_defaults(tmp_path):
    """While m3i_mm parses checkpoints with HistoryBuffers, a plain
    ``torch.load(weights_only=True)`` in another thread refuses them, as
    it does without m3i_mm."""
    buffer = HistoryBuffer()
    buffer.update(1.0)
    foreign = tmp_path / 'foreign.pth'
    torch.save({'message_hub': {'loss': buffer}, 'w': torch.ones(3)}, foreign)
    stop, refused, accepted = threading.Event(), [], []

    def ours():
        while not stop.is_set():
            parse_checkpoint(str(foreign))

    worker = threading.Thread(target=ours)
    worker.start()
    try:
        for _ in range(45):
            try:
                torch.load(foreign, weights_only=True)
                accepted.append(1)
            except Exception:
                refused.append(1)
    finally:
        stop.set()
        worker.join()
    assert len(refused) == 45 and not accepted


def _torch_archive(pickled: bytes, path) -> None:
    hostile_checkpoints._archive(pickled, str(path))


def test_loads_what_numpy_1_wrote(tmp_path):
    """numpy 1.x names ``numpy.core.multiarray._reconstruct``/``scalar``
    (numpy 2: ``numpy._core``); the bytes were written by numpy 1.26.4
    (``tests/fixtures/make_numpy1_checkpoint.py``)."""
    path = tmp_path / 'numpy1.pth'
    with open(osp.join(REPO, 'tests', 'fixtures', 'numpy1_checkpoint.pkl'),
              'rb') as f:
        _torch_archive(f.read(), path)
    ckpt = _load_checkpoint(str(path), map_location='cpu')
    assert ckpt['message_hub']['log_scalars']['loss'].mean() == 0.375
    assert ckpt['scalars']['int16'] == 3
    assert ckpt['scalars']['uint16'].dtype == np.uint16
    assert ckpt['arrays']['float16'].tolist() == [0, 1, 2]


@pytest.mark.parametrize('kind', [
    'float64', 'float32', 'float16', 'int64', 'int32', 'int16', 'int8',
    'uint64', 'uint32', 'uint16', 'uint8', 'bool_', 'complex64'
])
def test_loads_every_numeric_numpy_kind(tmp_path, kind):
    path = tmp_path / f'{kind}.pth'
    value = getattr(np, kind)(1)
    torch.save({'scalar': value, 'array': np.array([value, value])}, path)
    ckpt = parse_checkpoint(str(path))
    assert ckpt['scalar'] == value and ckpt['array'].dtype == value.dtype
    assert type(ckpt['scalar']) is type(value)
    assert ckpt['array'].flags.writeable


@pytest.mark.parametrize('value', [np.str_('x'), np.array(['x']),
                                   np.array([(1, 2.0)], dtype='i4,f8')])
def test_refuses_non_numeric_numpy_values(tmp_path, value):
    path = tmp_path / 'text.pth'
    torch.save({'meta': value}, path)
    with pytest.raises(UnsafeCheckpointError, match='numpy dtype'):
        parse_checkpoint(str(path))


def test_tensors_views_parameters_and_locations(tmp_path):
    base = torch.arange(12.)
    checkpoint = {
        'view': base[2:8].view(2, 3), 'same': base, 'T': base.view(3, 4).t(),
        'param': torch.nn.Parameter(torch.ones(2)), 'half': torch.ones(
            3, dtype=torch.bfloat16), 'size': torch.Size([2, 3]),
        'dtype': torch.float16, 'device': torch.device('cpu'),
        'set': {1, 2}, 'bytes': b'\x00\xff', 'complex': 1 + 2j,
        'slice': slice(1, None, 2),
        'od': collections.OrderedDict(a=torch.zeros(1)),
        'milestones': collections.Counter({16: 1, 18: 1})  # MultiStepLR
    }
    checkpoint['od']._metadata = collections.OrderedDict({'': {'version': 2}})
    path = tmp_path / 'ok.pth'
    torch.save(checkpoint, path)
    loaded = parse_checkpoint(str(path), map_location='cpu')
    for key, value in checkpoint.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(loaded[key], value) and loaded[
                key].stride() == value.stride(), key
        elif key != 'od':
            assert loaded[key] == value, key
    assert loaded['view'].untyped_storage().data_ptr() == loaded[
        'same'].untyped_storage().data_ptr()  # one storage, as saved
    assert type(loaded['param']) is torch.nn.Parameter
    assert loaded['od']._metadata == {'': {'version': 2}}
    moved = parse_checkpoint(str(path), map_location=lambda s, loc: s)
    assert torch.equal(moved['view'], checkpoint['view'])


def test_damaged_and_foreign_files_are_named(tmp_path):
    path = tmp_path / 'cut.pth'
    torch.save({'state_dict': {'w': torch.ones(100)}}, path)
    whole = path.read_bytes()
    path.write_bytes(whole[:300])
    with pytest.raises(NotACheckpointError,
                       match='Could not read checkpoint .*cut.pth'):
        _load_checkpoint(str(path), map_location='cpu')
    flipped = bytearray(whole)
    flipped[whole.index(b'\x00\x00\x80?') + 2] ^= 0x40  # inside a float
    path.write_bytes(bytes(flipped))
    with pytest.raises(NotACheckpointError, match='damaged .*CRC'):
        parse_checkpoint(str(path))
    png = tmp_path / 'image.png'
    png.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(100))
    with pytest.raises(NotACheckpointError, match='image.png .*not a torch'):
        CheckpointLoader.load_checkpoint(str(png))
    with pytest.raises(FileNotFoundError, match='is a folder'):
        load_checkpoint_file(str(tmp_path))
    legacy = tmp_path / 'legacy.pth'
    torch.save({'w': torch.ones(1)}, legacy,
               _use_new_zipfile_serialization=False)
    with pytest.raises(NotACheckpointError, match='legacy'):
        parse_checkpoint(str(legacy))


def test_trusted_override_unpickles(tmp_path, monkeypatch):
    path = tmp_path / 'trusted.pth'
    torch.save({'extra': argparse.Namespace(a=1)}, path)  # as InternImage's
    with pytest.raises(UnsafeCheckpointError, match='argparse.Namespace'):
        _load_checkpoint(str(path), map_location='cpu')
    monkeypatch.setenv('M3I_TRUST_CHECKPOINTS', '1')
    assert _load_checkpoint(str(path), map_location='cpu')['extra'].a == 1


def test_loads_what_mmengine_writes(tmp_path):
    buf = HistoryBuffer()
    buf.update(0.5)
    path = tmp_path / 'ok.pth'
    torch.save(
        {
            'state_dict': collections.OrderedDict(w=torch.ones(2)),
            'message_hub': {'log_scalars': {'loss': buf}},
            'meta': {'iter': 3, 'seed': 0}
        }, path)
    ckpt = _load_checkpoint(str(path), map_location='cpu')
    assert ckpt['meta']['iter'] == 3
    assert ckpt['message_hub']['log_scalars']['loss'].current() == 0.5
    assert HistoryBuffer._statistics_methods['mean'] is HistoryBuffer.mean


def test_torch_allow_list_is_untouched():
    """``import m3i_mm`` adds nothing to torch's process-wide allow-list
    (torch registers some of its own classes there)."""
    from torch._weights_only_unpickler import _get_user_allowed_globals
    assert [name for name in _get_user_allowed_globals()
            if not name.startswith('torch.')] == []


@pytest.mark.parametrize('protocol', [2, 3, 4, 5])
def test_every_pickle_protocol_of_torch_save_is_read(tmp_path, protocol):
    buffer = HistoryBuffer()
    buffer.update(2.0)
    checkpoint = {'w': torch.arange(5), 'hub': buffer, 'n': np.float32(3),
                  'set': {1, 2}, 'bytes': b'xy',
                  'array': np.arange(6.).reshape(2, 3).T}
    path = tmp_path / 'ckpt.pth'
    torch.save(checkpoint, path, pickle_protocol=protocol)
    loaded = parse_checkpoint(str(path))
    assert loaded['hub'].current() == 2.0 and loaded['n'] == np.float32(3)
    assert np.array_equal(loaded['array'], checkpoint['array'])
    assert loaded['set'] == {1, 2} and loaded['bytes'] == b'xy'
    assert torch.equal(loaded['w'], checkpoint['w'])
