"""Checkpoints: allow-listed loading (m3i_mm.compat; atomic writes are in
test_checkpoint_durability.py).

The gadget suite crafts pickles that try to run code (each would write a
marker file) through every global of our allow-list and through torch's
default rebuild helpers, and loads each through every loading path m3i_mm
ships. None may run code; each refusal names the file and the object.
"""
import collections
import io
import os
import os.path as osp
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import (CheckpointLoader, _load_checkpoint,
                                        get_torch_safe_globals)

from conftest import REPO, config_path, demo_loader_options, load_script
from m3i_mm.compat import (UnsafeCheckpointError, _describe,
                           _restricted_getattr, checkpoint_safe_globals,
                           safe_torch_load)


class Payload:
    """A class outside the allow-list (a stand-in for a malicious object)."""

    def __init__(self):
        self.value = 1


class Call:
    """Pickles as ``func(*args)``: one step of a gadget chain."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class Build:
    """Pickles as ``cls()`` then ``BUILD state``: any attributes on an
    instance of an allowed class."""

    def __init__(self, cls, state):
        self.cls, self.state = cls, state

    def __reduce__(self):
        return self.cls, (), self.state


class ObjectArray:
    """A numpy array of Python objects: its dtype built without ``BUILD``."""

    def __reduce__(self):
        return (np._core.multiarray._reconstruct, (np.ndarray, (0, ), b'b'),
                (1, (1, ), Call(np.dtype, 'O'), False, ['x']))


def _eval_chain(first, attr, marker):
    """``_rebuild_from_type_v2(getattr(getattr(first, attr), 'eval'), ...)``:
    with ``builtins.getattr`` allowed, ``getattr(getattr, '__self__')`` is
    the builtins module and torch's rebuild helper calls its ``eval``."""
    code = f"open({str(marker)!r}, 'w').write('ran') and torch.zeros(1)"
    reach = Call(getattr, Call(getattr, first, attr), 'eval')
    return Call(torch._tensor._rebuild_from_type_v2, reach, torch.Tensor,
                (code, ), {})


def _allow_listed():
    """(name, object) of every global our allow-list adds."""
    for entry in checkpoint_safe_globals():
        obj, name = entry if isinstance(entry, tuple) else (
            entry, f'{entry.__module__}.{entry.__qualname__}')
        yield name, obj


def _torch_rebuild_helpers():
    from torch._weights_only_unpickler import _get_allowed_globals
    for name, obj in _get_allowed_globals().items():
        if '_rebuild' in name:
            yield name, obj


def gadgets(marker):
    """(id, checkpoint object, what the refusal must name)."""
    real = {'state_dict': collections.OrderedDict(w=torch.ones(2))}
    for name, obj in list(_allow_listed()) + list(_torch_rebuild_helpers()):
        first = getattr if obj is _restricted_getattr else obj
        attr = '__self__' if first is getattr else '__init__'
        yield (f'getattr-{name}', dict(real, meta=_eval_chain(first, attr,
                                                              marker)),
               f'builtins.getattr({_describe(first)}, {attr!r})')
    for helper_name, helper in _torch_rebuild_helpers():
        chain = Call(helper, Call(getattr, getattr, '__self__'), 'eval')
        yield (f'through-{helper_name}', dict(real, meta=chain),
               "builtins.getattr(builtins.getattr, '__self__')")
    for module, func in (('builtins', eval), ('builtins', exec),
                         ('os', os.system), ('subprocess', subprocess.Popen)):
        yield (f'global-{module}.{func.__name__}',
               dict(real, meta=Call(func, f'open({str(marker)!r}, "w")')),
               func.__name__)
    statistics = {'mean': torch._tensor._rebuild_from_type_v2}
    buffer_state = dict(max_length=10, _log_history=np.zeros(1),
                        _count_history=np.ones(1),
                        _statistics_methods=statistics)
    yield ('state-HistoryBuffer', dict(real, message_hub=Build(
        HistoryBuffer, buffer_state)), "'_statistics_methods'")
    # HistoryBuffer.__setstate__ merges this into its class-level table.
    table_state = dict(buffer_state, statistics_methods={'mean': slice})
    del table_state['_statistics_methods']
    yield ('class-table-HistoryBuffer', dict(real, message_hub=Build(
        HistoryBuffer, table_state)), "statistics methods ['mean']")
    yield ('state-OrderedDict',
           dict(state_dict=Build(collections.OrderedDict,
                                 {'items': torch._utils._rebuild_tensor_v2})),
           "'items'")
    yield ('object-dtype', dict(real, meta=np.dtype('O')),
           'numpy.dtypes.ObjectDType')
    yield ('object-array', dict(real, meta=ObjectArray()), 'dtype object')
    yield ('pickled-class', dict(real, extra=Payload()), 'Payload')


def _loaders(tmp_path):
    internimage = load_script('tools', 'model_converters',
                              'internimage_official_to_m3i.py')
    downstream = load_script('tools', 'model_converters',
                             'm3i_to_downstream.py')
    out = str(tmp_path / 'converted.pth')
    return {
        'safe_torch_load': lambda p: safe_torch_load(p, map_location='cpu'),
        # Runner.resume, Runner.load_checkpoint (load_from, tools/test.py)
        # and init_cfg=Pretrained all call this.
        '_load_checkpoint': lambda p: _load_checkpoint(p, map_location='cpu'),
        'CheckpointLoader': lambda p: CheckpointLoader.load_checkpoint(p),
        'internimage_official_to_m3i': lambda p: internimage.main([p, out]),
        'm3i_to_downstream': lambda p: downstream.main([p, out]),
    }


def test_old_allow_list_runs_the_chain(tmp_path):
    """The chain is real: with mmengine's allow-list (``builtins.getattr``
    for the whole process, as m3i_mm registered it before) it runs code."""
    marker = tmp_path / 'marker'
    path = tmp_path / 'evil.pth'
    torch.save(dict(meta=_eval_chain(getattr, '__self__', marker)), path)
    with torch.serialization.safe_globals(get_torch_safe_globals()):
        torch.load(path, weights_only=True)
    assert marker.exists()


def test_no_gadget_runs_code_on_any_loading_path(tmp_path):
    marker = tmp_path / 'marker'
    loaders = _loaders(tmp_path)
    for gadget_id, checkpoint, named in gadgets(marker):
        path = str(tmp_path / f'{gadget_id}.pth')
        torch.save(checkpoint, path)
        for loader_id, load in loaders.items():
            try:
                load(path)
                error = None
            except Exception as err:  # checked below, after the marker
                error = err
            assert not marker.exists(), f'{gadget_id} ran code: {loader_id}'
            assert isinstance(error, UnsafeCheckpointError), (gadget_id,
                                                              loader_id, error)
            assert path in str(error) and named in str(error), (gadget_id,
                                                                loader_id,
                                                                str(error))
        # Plain torch in this process (which imported m3i_mm): torch's own
        # defaults, nothing of ours added process-wide.
        try:
            torch.load(path, weights_only=True)
        except Exception:
            pass
        assert not marker.exists(), gadget_id
    assert not osp.exists(tmp_path / 'converted.pth')
    assert HistoryBuffer._statistics_methods['mean'] is HistoryBuffer.mean


def test_command_line_tools_refuse_the_chain(tmp_path, demo_root):
    """The Runner's loading paths as users start them, in parallel."""
    marker = tmp_path / 'marker'
    evil = str(tmp_path / 'evil.pth')
    torch.save(
        dict(state_dict=collections.OrderedDict(w=torch.ones(2)),
             meta=_eval_chain(getattr, '__self__', marker)), evil)
    config = config_path('demo', 'vit-tiny_sup_demo.py')
    data = demo_loader_options(
        demo_root, ('train_dataloader', 'val_dataloader', 'test_dataloader'))
    work = str(tmp_path / 'work')
    # The converters' command lines are their main(argv), run above.
    commands = {
        'resume': ['tools/train.py', config, '--work-dir', work, '--resume',
                   evil, '--cfg-options', 'train_cfg.max_iters=1', *data],
        'load_from': ['tools/train.py', config, '--work-dir', work,
                      '--cfg-options', f'load_from={evil}',
                      'train_cfg.max_iters=1', *data],
        'test': ['tools/test.py', config, evil, '--cfg-options', *data],
    }
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop('M3I_TRUST_CHECKPOINTS', None)
    procs = {
        name: subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env,
                               stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        for name, argv in commands.items()
    }
    for name, proc in procs.items():
        output = proc.communicate(timeout=600)[0]
        assert proc.returncode != 0, (name, output[-2000:])
        assert 'UnsafeCheckpointError' in output, (name, output[-2000:])
        assert evil in output and 'builtins.getattr' in output, name
    assert not marker.exists()


def _torch_archive(pickled: bytes, path) -> None:
    """A ``torch.save`` zip archive whose ``data.pkl`` is ``pickled``."""
    buf = io.BytesIO()
    torch.save({}, buf)
    buf.seek(0)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, 'w') as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info.filename, pickled if info.filename.endswith(
                '/data.pkl') else data)


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
    'uint64', 'uint32', 'uint16', 'uint8', 'bool_', 'complex64', 'str_'
])
def test_loads_every_numpy_scalar_kind(tmp_path, kind):
    path = tmp_path / f'{kind}.pth'
    value = getattr(np, kind)(1)
    torch.save({'scalar': value, 'array': np.array([value])}, path)
    ckpt = safe_torch_load(str(path))
    assert ckpt['scalar'] == value and ckpt['array'].dtype == value.dtype


def test_refuses_pickled_object_outside_allow_list(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'extra': Payload()}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        _load_checkpoint(str(path), map_location='cpu')
    assert 'evil.pth' in str(err.value) and 'Payload' in str(err.value)


def test_truncated_checkpoint_names_the_file(tmp_path):
    path = tmp_path / 'cut.pth'
    torch.save({'state_dict': {'w': torch.ones(100)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(RuntimeError, match='Could not read checkpoint .*cut.pth'):
        _load_checkpoint(str(path), map_location='cpu')


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


def test_allow_list_is_not_process_wide():
    from torch._weights_only_unpickler import _get_user_allowed_globals
    assert 'builtins.getattr' not in _get_user_allowed_globals()
    assert HistoryBuffer not in _get_user_allowed_globals().values()

