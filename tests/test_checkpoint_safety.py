"""Checkpoints: allow-listed loading and atomic writes (m3i_mm.compat)."""
import collections
import os

import pytest
import torch
from mmengine.fileio.backends.local_backend import LocalBackend
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint

from m3i_mm.compat import UnsafeCheckpointError


class Payload:
    """A class outside the allow-list (a stand-in for a malicious object)."""

    def __init__(self):
        self.value = 1


def test_refuses_pickled_object_outside_allow_list(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'extra': Payload()}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        _load_checkpoint(str(path), map_location='cpu')
    assert 'evil.pth' in str(err.value) and 'Payload' in str(err.value)


def test_trusted_override_loads_it(tmp_path, monkeypatch):
    path = tmp_path / 'trusted.pth'
    torch.save({'extra': Payload()}, path)
    monkeypatch.setenv('M3I_TRUST_CHECKPOINTS', '1')
    assert _load_checkpoint(str(path), map_location='cpu')['extra'].value == 1


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


def test_local_writes_are_atomic(tmp_path, monkeypatch):
    target = tmp_path / 'ckpt.pth'
    backend = LocalBackend()
    backend.put(b'old', str(target))

    def fail(fd):
        raise OSError('disk full')

    monkeypatch.setattr(os, 'fsync', fail)
    with pytest.raises(OSError, match='disk full'):
        backend.put(b'new-but-interrupted', str(target))
    assert target.read_bytes() == b'old'  # never truncated
    assert sorted(os.listdir(tmp_path)) == ['ckpt.pth']  # no temp left
    monkeypatch.undo()
    backend.put_text('new', str(target))
    assert target.read_text() == 'new'
