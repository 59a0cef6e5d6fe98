"""Read a ``torch.save`` checkpoint as data: nothing in the file is executed.

A checkpoint is a zip archive (``torch.save``'s format since torch 1.6) with a
pickle, ``<archive>/data.pkl``, and one record per tensor storage,
``<archive>/data/<key>``. :func:`parse_checkpoint` reads the archive itself
and runs the pickle through a small pickle machine of its own
(:class:`_PickleMachine`) that knows the opcodes ``torch.save`` writes and a
closed table of names (:data:`_GLOBALS`). A name in the pickle never reaches
the object it names: ``REDUCE``, ``NEWOBJ`` and ``BUILD`` hand their
arguments to a parser of the same name here, which checks them as plain data
and only then builds the value:

====================================  ====================================
pickle                                built, after validation
====================================  ====================================
``torch._utils._rebuild_tensor_v2``   a view of a storage read from the
                                      archive (bounds and byte counts
                                      checked, CRC-32 verified)
``torch._utils._rebuild_parameter``   ``nn.Parameter`` of such a tensor
``collections.OrderedDict``           an empty ``OrderedDict``; ``BUILD``
                                      may only give it torch's ``_metadata``
                                      (plain data)
``collections.Counter``               from a dict of plain data (mmengine's
                                      ``MultiStepParamScheduler``)
numpy ``_reconstruct`` / ``scalar``   arrays and scalars of numeric dtypes
/ ``dtype``                           (no fields, sub-arrays or objects);
                                      byte counts must match shapes
mmengine ``HistoryBuffer``            built by its constructor from two
                                      validated 1-D numeric arrays; its
                                      pickled statistics table must be the
                                      four defaults and is never applied
``set``, ``frozenset``, ``complex``,  from plain arguments
``slice``, ``bytes``, ``_codecs``
``.encode`` (latin-1), ``torch``
``.Size``, ``torch.device``, torch
dtypes
====================================  ====================================

Everything else (another name, ``BUILD`` on anything not listed, instance
attributes on containers, an object used before it is built, an opcode
``torch.save`` does not write) is refused with :class:`UnsafeCheckpointError`
naming the file, the object or opcode and its byte offset. A file that is no
such archive, is truncated or damaged (CRC mismatch) raises
:class:`NotACheckpointError` naming the file.

Resources are bounded by the file: compressed records are refused (so the
bytes of every tensor are bytes present in the file), a storage must be
exactly as long as its record, and the pickle may create at most
:data:`MAX_PICKLE_OBJECTS` objects.

The machine is per call; nothing of the process (torch's allow-list, any
class) is changed while it runs. Reference: the pickle opcodes of CPython's
``Lib/pickletools.py``; torch's format, ``torch/serialization.py`` (``_save``,
``_load``) of torch 2.13.
"""
import collections
import contextlib
import io
import os
import pickle
import re
import struct
import zipfile
import zlib
from typing import (Any, BinaryIO, Callable, Dict, Iterator, List, Optional,
                    Tuple, Union)

import numpy as np
import torch

# Most objects (containers, strings, numbers) one pickle may create.
MAX_PICKLE_OBJECTS = 4_000_000
# Largest ``data.pkl`` read into memory (real ones are a few MiB).
MAX_PICKLE_BYTES = 256 * 1024 * 1024
_READ_CHUNK = 64 * 1024 * 1024

MapLocation = Union[None, str, torch.device, Dict[str, str], Callable]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds something :func:`parse_checkpoint` does not build.

    The message names the file and the object or opcode.
    """


class NotACheckpointError(RuntimeError):
    """The file is not a readable ``torch.save`` archive (not a checkpoint,
    truncated, damaged or in torch's pre-1.6 format); names the file."""


# --------------------------------------------------------------------------
# The archive


def _local_data_offset(stream: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Offset of a member's bytes: after its local header (PKWARE APPNOTE
    4.3.7: 30 bytes, then the name and the extra field)."""
    stream.seek(info.header_offset)
    header = stream.read(30)
    if len(header) != 30 or header[:4] != b'PK\x03\x04':
        raise _Damaged(f'no local header for {info.filename}')
    name_len, extra_len = struct.unpack('<HH', header[26:30])
    return info.header_offset + 30 + name_len + extra_len


class _Archive:
    """The members of a ``torch.save`` zip, read without decompression."""

    def __init__(self, stream: BinaryIO, name: str) -> None:
        self.stream, self.name = stream, name
        stream.seek(0, os.SEEK_END)
        self.size = stream.tell()
        stream.seek(0)
        self.zip = zipfile.ZipFile(stream)
        infos = self.zip.infolist()
        if not infos:
            raise _Damaged('the zip archive is empty')
        self.members: Dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.filename in self.members:
                raise _Damaged(f'member {info.filename!r} appears twice')
            if info.compress_type != zipfile.ZIP_STORED:
                raise _Refusal(
                    f'member {info.filename!r} is compressed (method '
                    f'{info.compress_type}); torch.save stores records '
                    f'uncompressed')
            if info.flag_bits & 0x1:
                raise _Refusal(f'member {info.filename!r} is encrypted')
            self.members[info.filename] = info
        self.offsets = self._data_offsets(infos)
        pickles = [n for n in self.members if n.endswith('/data.pkl')]
        if len(pickles) != 1 or pickles[0].count('/') != 1:
            raise _Damaged(f'expected one <archive>/data.pkl, found '
                             f'{pickles or "none"}')
        self.prefix = pickles[0][:-len('data.pkl')]
        order = self.read_small('byteorder', default=b'little')
        if order != b'little':
            raise _Refusal(f'byte order {order!r}: only little-endian '
                           f'checkpoints are read')

    def _data_offsets(self, infos: List[zipfile.ZipInfo]) -> Dict[str, int]:
        """Where each member's bytes start; members may not overlap (a zip
        whose entries share bytes would describe more data than it holds)."""
        offsets, end = {}, 0
        for info in sorted(infos, key=lambda i: i.header_offset):
            if info.header_offset < end:
                raise _Refusal(f'member {info.filename!r} overlaps the '
                               f'member before it')
            offsets[info.filename] = _local_data_offset(self.stream, info)
            end = offsets[info.filename] + info.compress_size
            if end > self.size:
                raise _Damaged(f'member {info.filename!r} runs past the '
                                 f'end of the file')
        return offsets

    def read_small(self, record: str, default: bytes = None) -> bytes:
        info = self.members.get(self.prefix + record)
        if info is None and default is not None:
            return default
        if info is None:
            raise _Damaged(f'no record {self.prefix + record}')
        if info.file_size > MAX_PICKLE_BYTES:
            raise _Refusal(f'record {info.filename} has {info.file_size} '
                           f'bytes (at most {MAX_PICKLE_BYTES} are read)')
        return self.zip.read(info)  # checks the CRC

    def read_storage(self, key: str, nbytes: int) -> torch.Tensor:
        """The bytes of ``data/<key>`` as a uint8 tensor; its length must be
        ``nbytes`` and its CRC-32 the recorded one."""
        info = self.members.get(f'{self.prefix}data/{key}')
        if info is None:
            raise _Refusal(f'storage {key!r} has no record data/{key}')
        if info.file_size != nbytes:
            raise _Refusal(
                f'storage {key!r} declares {nbytes} bytes but its record '
                f'data/{key} has {info.file_size}')
        offset = self.offsets[info.filename]
        out = torch.empty(nbytes, dtype=torch.uint8)
        view = memoryview(out.numpy())
        self.stream.seek(offset)
        crc, done = 0, 0
        while done < nbytes:
            got = self.stream.readinto(view[done:done + _READ_CHUNK])
            if not got:
                raise _Damaged(f'record data/{key} is truncated')
            crc = zlib.crc32(view[done:done + got], crc)
            done += got
        if crc != info.CRC:
            raise _Damaged(f'record data/{key} is damaged (CRC-32 '
                             f'{crc:08x}, recorded {info.CRC:08x})')
        return out


class _Refusal(Exception):
    """Internal: becomes an :class:`UnsafeCheckpointError` naming the file."""


class _Damaged(Exception):
    """Internal: becomes a :class:`NotACheckpointError` naming the file."""


# --------------------------------------------------------------------------
# Names a checkpoint may use, and what each stands for

_STORAGE_DTYPES = {
    'DoubleStorage': torch.float64, 'FloatStorage': torch.float32,
    'HalfStorage': torch.float16, 'BFloat16Storage': torch.bfloat16,
    'LongStorage': torch.int64, 'IntStorage': torch.int32,
    'ShortStorage': torch.int16, 'CharStorage': torch.int8,
    'ByteStorage': torch.uint8, 'BoolStorage': torch.bool,
    'ComplexDoubleStorage': torch.complex128,
    'ComplexFloatStorage': torch.complex64, 'UntypedStorage': torch.uint8,
}
_TORCH_DTYPES = {
    str(dtype).split('.')[1]: dtype
    for dtype in set(_STORAGE_DTYPES.values())
}
# numpy dtype codes a checkpoint may hold: numbers and booleans.
_NUMPY_CODES = {
    'b1', 'i1', 'i2', 'i4', 'i8', 'u1', 'u2', 'u4', 'u8', 'f2', 'f4', 'f8',
    'c8', 'c16'
}
_STATISTICS = ('min', 'max', 'current', 'mean')
_LOCATION = re.compile(
    r'^(cpu|cuda|xpu|mps|npu|mlu|musa|hpu|meta|privateuseone)(:\d{1,4})?$')
_MODULE_ALIASES = {
    '__builtin__': 'builtins',
    'numpy.core.multiarray': 'numpy._core.multiarray',
    'numpy.core.numeric': 'numpy._core.numeric',
}


class _Name:
    """A name from the pickle: only a key into the parsers below."""

    __slots__ = ('module', 'name', 'kind', 'value')

    def __init__(self, module: str, name: str, kind: str,
                 value: Any = None) -> None:
        self.module, self.name, self.kind, self.value = (module, name, kind,
                                                         value)

    def __repr__(self) -> str:
        return f'{self.module}.{self.name}'


def _global_table() -> Dict[Tuple[str, str], Tuple[str, Any]]:
    table = {
        ('collections', 'OrderedDict'): ('ordered_dict', None),
        ('collections', 'Counter'): ('counter', None),
        ('torch._utils', '_rebuild_tensor_v2'): ('tensor', None),
        ('torch._utils', '_rebuild_parameter'): ('parameter', None),
        ('torch', 'Size'): ('size', None),
        ('torch', 'device'): ('device', None),
        ('builtins', 'set'): ('set', set),
        ('builtins', 'frozenset'): ('set', frozenset),
        ('builtins', 'complex'): ('complex', None),
        ('builtins', 'slice'): ('slice', None),
        ('builtins', 'bytes'): ('bytes', None),
        ('builtins', 'getattr'): ('getattr', None),
        ('_codecs', 'encode'): ('encode', None),
        ('numpy._core.multiarray', '_reconstruct'): ('np_reconstruct', None),
        ('numpy._core.multiarray', 'scalar'): ('np_scalar', None),
        ('numpy._core.numeric', '_frombuffer'): ('np_frombuffer', None),
        ('numpy', 'ndarray'): ('np_ndarray', None),
        ('numpy', 'dtype'): ('np_dtype', None),
        ('mmengine.logging.history_buffer', 'HistoryBuffer'):
        ('history_buffer', None),
    }
    for method in _STATISTICS:  # protocol 4 names methods by qualname
        table[('mmengine.logging.history_buffer',
               f'HistoryBuffer.{method}')] = ('statistic', method)
    for name, dtype in _STORAGE_DTYPES.items():
        table[('torch', name)] = ('storage_type', dtype)
    for name, dtype in _TORCH_DTYPES.items():
        table[('torch', name)] = ('dtype', dtype)
    return table


_GLOBALS = _global_table()


class _Pending:
    """An object between ``REDUCE``/``NEWOBJ`` and its ``BUILD``."""

    __slots__ = ('kind', 'args')

    def __init__(self, kind: str, args: Any) -> None:
        self.kind, self.args = kind, args

    def __repr__(self) -> str:
        return f'<unbuilt {self.kind}>'


class _Statistic:
    """``getattr(HistoryBuffer, name)`` of mmengine's statistics table."""

    __slots__ = ('name', )

    def __init__(self, name: str) -> None:
        self.name = name


class _Storage:
    """A storage read from the archive, and where it is restored to."""

    __slots__ = ('data', 'dtype', 'numel')

    def __init__(self, data: torch.Tensor, dtype: torch.dtype,
                 numel: int) -> None:
        self.data, self.dtype, self.numel = data, dtype, numel


# --------------------------------------------------------------------------
# Argument checks


def _int(value: Any, what: str, low: int = 0, high: int = 2**62) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _Refusal(f'{what} must be an int in [{low}, {high}], got '
                       f'{_short(value)}')
    return value


def _ints(value: Any, what: str) -> Tuple[int, ...]:
    if type(value) not in (tuple, torch.Size) or len(value) > 64:
        raise _Refusal(f'{what} must be a tuple of at most 64 ints, got '
                       f'{_short(value)}')
    return tuple(_int(v, what) for v in value)


def _short(value: Any, depth: int = 0) -> str:
    if isinstance(value, (int, float, str, bool, type(None))) or (
            isinstance(value, bytes) and len(value) <= 16):
        text = repr(value)
    elif type(value) is tuple and depth < 2:
        text = f'({", ".join(_short(v, depth + 1) for v in value[:8])})'
    elif isinstance(value, dict):
        text = f'<{type(value).__name__} with keys {[*map(str, value)][:8]}>'
    else:
        text = f'<{type(value).__name__}>'
    return text if len(text) <= 80 else text[:77] + '...'


def _empty_hooks(value: Any) -> None:
    if type(value) is not collections.OrderedDict or value or _attrs(value):
        raise _Refusal('a tensor\'s backward hooks must be an empty '
                       f'OrderedDict, got {_short(value)}')


def _attrs(value: Any) -> dict:
    return getattr(value, '__dict__', None) or {}


def _plain(value: Any, what: str, depth: int = 0) -> Any:
    """Nested dicts/lists of str, int, float, bool and None only."""
    if depth > 16:
        raise _Refusal(f'{what} is nested too deeply')
    if value is None or type(value) in (str, int, float, bool):
        return value
    if type(value) in (dict, collections.OrderedDict) and not _attrs(value):
        for key, item in value.items():
            _plain(key, what, depth + 1)
            _plain(item, what, depth + 1)
        return value
    if type(value) in (list, tuple):
        for item in value:
            _plain(item, what, depth + 1)
        return value
    raise _Refusal(f'{what} holds {_short(value)} (plain data only)')


def _numpy_dtype(code: Any, state: Any) -> np.dtype:
    """numpy's ``dtype.__reduce__``: ``dtype(code, False, True)`` then
    ``BUILD (3, byteorder, None, None, None, -1, -1, 0)`` for a number."""
    if code not in _NUMPY_CODES:
        raise _Refusal(f'numpy dtype {_short(code)} (numbers only: '
                       f'{sorted(_NUMPY_CODES)})')
    if (type(state) is not tuple or len(state) != 8 or state[0] != 3
            or state[1] not in ('<', '|', '=')
            or state[2:] != (None, None, None, -1, -1, 0)):
        raise _Refusal(f'numpy dtype {code} with state {_short(state)} '
                       f'(fields, sub-arrays or flags)')
    dtype = np.dtype(code)
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype:
        raise _Refusal(f'numpy dtype {dtype}')  # numpy itself changed
    return dtype


def _numpy_array(args: Any, state: Any) -> np.ndarray:
    """``_reconstruct(ndarray, (0,), b'b')`` then ``BUILD (1, shape, dtype,
    is_fortran, raw_bytes)``."""
    if (type(state) is not tuple or len(state) != 5 or state[0] != 1
            or not isinstance(state[2], np.dtype) or type(state[3]) is not bool
            or type(state[4]) is not bytes):
        raise _Refusal(f'numpy array state {_short(state)} (raw bytes of '
                       f'a numeric dtype expected)')
    _, shape, dtype, fortran, raw = state
    shape = _ints(shape, 'a numpy array shape')
    count = int(np.prod(shape, dtype=object))
    if count * dtype.itemsize != len(raw):
        raise _Refusal(f'numpy array of shape {shape} and dtype {dtype} '
                       f'with {len(raw)} bytes')
    array = np.frombuffer(_booleans(raw, dtype), dtype=dtype).reshape(
        shape, order='F' if fortran else 'C')
    return array.copy(order='K')


def _booleans(raw: bytes, dtype: np.dtype) -> bytes:
    """numpy booleans must be bytes 0 or 1."""
    if dtype.kind == 'b' and raw.translate(None, b'\x00\x01'):
        raise _Refusal('a numpy boolean that is neither 0 nor 1')
    return raw


def _history_buffer(state: Any) -> Any:
    """mmengine's ``HistoryBuffer``: ``NEWOBJ`` then ``BUILD`` of its
    ``__dict__`` (with the class's statistics table, mmengine 0.10.x)."""
    from mmengine.logging.history_buffer import HistoryBuffer
    keys = {'max_length', '_log_history', '_count_history'}
    if type(state) is not dict or not keys <= set(state) <= keys | {
            'statistics_methods', '_statistics_methods'}:
        raise _Refusal(f'a HistoryBuffer state with keys '
                       f'{sorted(map(str, state)) if type(state) is dict else _short(state)}'
                       f' (expected {sorted(keys)} and its statistics table)')
    for key in ('statistics_methods', '_statistics_methods'):
        table = state.get(key, {})
        if type(table) is not dict or not all(
                type(v) is _Statistic and v.name == k for k, v in table.items()):
            raise _Refusal(f'a HistoryBuffer whose {key} is not a subset of '
                           f'its default statistics {list(_STATISTICS)}')
    max_length = _int(state['max_length'], 'HistoryBuffer.max_length', 1,
                      2**31)
    history = []
    for key in ('_log_history', '_count_history'):
        array = state[key]
        if type(array) is not np.ndarray or array.ndim != 1 or len(
                array) > max_length:
            raise _Refusal(f'HistoryBuffer.{key} must be a 1-D numpy array '
                           f'of at most max_length items')
        history.append(array)
    if len(history[0]) != len(history[1]):
        raise _Refusal('HistoryBuffer histories of different lengths')
    return HistoryBuffer(history[0], history[1], max_length)


# --------------------------------------------------------------------------
# The pickle machine

_OPS: Dict[int, str] = {}


def _op(code: bytes):

    def register(method):
        _OPS[code[0]] = method.__name__
        return method

    return register


class _PickleMachine:
    """A pickle reader over ``data`` that only builds the values above.

    Args:
        data (bytes): The pickle.
        load_storage (callable): ``(dtype, key, location, numel) ->
            _Storage`` for torch's persistent ids.
    """

    def __init__(self, data: bytes,
                 load_storage: Callable[..., _Storage]) -> None:
        self.data, self.pos = data, 0
        self.load_storage = load_storage
        self.stack: List[Any] = []
        self.marks: List[int] = []
        self.memo: Dict[int, Any] = {}
        self.memo_keys: Dict[int, List[int]] = {}
        self.created = 0
        self.done = False
        self.result = None
        self.dispatch = {code: getattr(self, name)
                         for code, name in _OPS.items()}

    # -- reading the stream
    def read(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Refusal(f'{n} bytes requested past the end of the pickle')
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def read_uint(self, n: int) -> int:
        return int.from_bytes(self.read(n), 'little')

    def run(self) -> Any:
        while not self.done:
            start = self.pos
            code = self.read(1)[0]
            step = self.dispatch.get(code)
            if step is None:
                raise _Refusal(f'opcode {bytes([code])!r} at byte {start} '
                               f'of data.pkl: not one torch.save writes')
            method = _OPS[code].upper().removesuffix('_OP')
            try:
                step()
            except _Refusal as err:
                raise _Refusal(f'{err} ({method} at byte {start} '
                               f'of data.pkl)') from None
            except (IndexError, KeyError, TypeError, ValueError,
                    OverflowError, RecursionError, UnicodeDecodeError) as err:
                raise _Refusal(f'malformed {method} at byte {start} '
                               f'of data.pkl: {type(err).__name__}: '
                               f'{err}') from None
        if self.pos != len(self.data):
            raise _Refusal(f'{len(self.data) - self.pos} bytes after STOP')
        return self.result

    # -- the stack
    def push(self, value: Any) -> None:
        self.created += 1
        if self.created > MAX_PICKLE_OBJECTS:
            raise _Refusal(f'more than {MAX_PICKLE_OBJECTS} objects')
        self.stack.append(value)

    def pop(self) -> Any:
        return self._built(self.stack.pop())

    def pop_mark(self) -> List[Any]:
        mark = self.marks.pop()
        items, self.stack[mark:] = self.stack[mark:], []
        return [self._built(item) for item in items]

    @staticmethod
    def _built(value: Any) -> Any:
        if type(value) is _Pending:
            raise _Refusal(f'{value!r} is used before it is built')
        return value

    # -- protocol and framing
    @_op(pickle.PROTO)
    def proto(self) -> None:
        if self.read(1)[0] > 5:
            raise _Refusal('unknown pickle protocol')

    @_op(pickle.FRAME)
    def frame(self) -> None:
        self.read(8)

    @_op(pickle.STOP)
    def stop(self) -> None:
        self.result = self.pop()
        if self.stack or self.marks:
            raise _Refusal('values left on the stack at STOP')
        self.done = True

    @_op(pickle.MARK)
    def mark(self) -> None:
        self.marks.append(len(self.stack))

    @_op(pickle.POP)
    def pop_op(self) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark()

    @_op(pickle.POP_MARK)
    def pop_mark_op(self) -> None:
        self.pop_mark()

    @_op(pickle.DUP)
    def dup(self) -> None:
        self.push(self._built(self.stack[-1]))

    # -- atoms
    @_op(pickle.NONE)
    def none(self) -> None:
        self.push(None)

    @_op(pickle.NEWTRUE)
    def true(self) -> None:
        self.push(True)

    @_op(pickle.NEWFALSE)
    def false(self) -> None:
        self.push(False)

    @_op(pickle.BININT)
    def binint(self) -> None:
        self.push(struct.unpack('<i', self.read(4))[0])

    @_op(pickle.BININT1)
    def binint1(self) -> None:
        self.push(self.read(1)[0])

    @_op(pickle.BININT2)
    def binint2(self) -> None:
        self.push(self.read_uint(2))

    @_op(pickle.LONG1)
    def long1(self) -> None:
        self.push(int.from_bytes(self.read(self.read_uint(1)), 'little',
                                 signed=True))

    @_op(pickle.LONG4)
    def long4(self) -> None:
        n = self.read_uint(4)
        if n > 64:
            raise _Refusal(f'a {n}-byte integer')
        self.push(int.from_bytes(self.read(n), 'little', signed=True))

    @_op(pickle.BINFLOAT)
    def binfloat(self) -> None:
        self.push(struct.unpack('>d', self.read(8))[0])

    @_op(pickle.SHORT_BINUNICODE)
    def short_binunicode(self) -> None:
        self.push(self.read(self.read_uint(1)).decode('utf-8',
                                                      'surrogatepass'))

    @_op(pickle.BINUNICODE)
    def binunicode(self) -> None:
        self.push(self.read(self.read_uint(4)).decode('utf-8',
                                                      'surrogatepass'))

    @_op(pickle.BINUNICODE8)
    def binunicode8(self) -> None:
        self.push(self.read(self.read_uint(8)).decode('utf-8',
                                                      'surrogatepass'))

    @_op(pickle.SHORT_BINBYTES)
    def short_binbytes(self) -> None:
        self.push(self.read(self.read_uint(1)))

    @_op(pickle.BINBYTES)
    def binbytes(self) -> None:
        self.push(self.read(self.read_uint(4)))

    @_op(pickle.BINBYTES8)
    def binbytes8(self) -> None:
        self.push(self.read(self.read_uint(8)))

    @_op(pickle.BYTEARRAY8)
    def bytearray8(self) -> None:
        self.push(bytearray(self.read(self.read_uint(8))))

    # -- containers
    @_op(pickle.EMPTY_TUPLE)
    def empty_tuple(self) -> None:
        self.push(())

    @_op(pickle.TUPLE)
    def tuple_op(self) -> None:
        self.push(tuple(self.pop_mark()))

    @_op(pickle.TUPLE1)
    def tuple1(self) -> None:
        self.push((self.pop(), ))

    @_op(pickle.TUPLE2)
    def tuple2(self) -> None:
        b, a = self.pop(), self.pop()
        self.push((a, b))

    @_op(pickle.TUPLE3)
    def tuple3(self) -> None:
        c, b, a = self.pop(), self.pop(), self.pop()
        self.push((a, b, c))

    @_op(pickle.EMPTY_LIST)
    def empty_list(self) -> None:
        self.push([])

    @_op(pickle.EMPTY_DICT)
    def empty_dict(self) -> None:
        self.push({})

    @_op(pickle.EMPTY_SET)
    def empty_set(self) -> None:
        self.push(set())

    def _target(self, kinds: Tuple[type, ...]) -> Any:
        target = self._built(self.stack[-1])
        if type(target) not in kinds:
            raise _Refusal(f'cannot add items to {_short(target)}')
        return target

    @_op(pickle.APPEND)
    def append(self) -> None:
        value = self.pop()
        self._target((list, )).append(value)

    @_op(pickle.APPENDS)
    def appends(self) -> None:
        items = self.pop_mark()
        self._target((list, )).extend(items)
        self.created += len(items)

    @_op(pickle.SETITEM)
    def setitem(self) -> None:
        value, key = self.pop(), self.pop()
        self._target((dict, collections.OrderedDict))[key] = value

    @_op(pickle.SETITEMS)
    def setitems(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise _Refusal('SETITEMS with an odd number of values')
        target = self._target((dict, collections.OrderedDict))
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]
        self.created += len(items)

    @_op(pickle.ADDITEMS)
    def additems(self) -> None:
        items = self.pop_mark()
        self._target((set, )).update(items)

    @_op(pickle.FROZENSET)
    def frozenset_op(self) -> None:
        self.push(frozenset(self.pop_mark()))

    # -- memo
    def _put(self, key: int) -> None:
        value = self.stack[-1]
        self.memo[key] = value
        if type(value) is _Pending:
            self.memo_keys.setdefault(id(value), []).append(key)

    @_op(pickle.BINPUT)
    def binput(self) -> None:
        self._put(self.read_uint(1))

    @_op(pickle.LONG_BINPUT)
    def long_binput(self) -> None:
        self._put(self.read_uint(4))

    @_op(pickle.MEMOIZE)
    def memoize(self) -> None:
        self._put(len(self.memo))

    def _get(self, key: int) -> None:
        if key not in self.memo:
            raise _Refusal(f'memo key {key} was never stored')
        self.push(self._built(self.memo[key]))

    @_op(pickle.BINGET)
    def binget(self) -> None:
        self._get(self.read_uint(1))

    @_op(pickle.LONG_BINGET)
    def long_binget(self) -> None:
        self._get(self.read_uint(4))

    # -- names and calls
    def _name(self, module: str, name: str) -> None:
        module = _MODULE_ALIASES.get(module, module)
        found = _GLOBALS.get((module, name))
        if found is None:
            raise _Refusal(f'global {module}.{name} (not one of the '
                           f'{len(_GLOBALS)} names a checkpoint may use)')
        kind, value = found
        if kind == 'dtype':
            self.push(value)  # a torch dtype is a value, not a callable
        elif kind == 'statistic':
            self.push(_Statistic(value))
        else:
            self.push(_Name(module, name, kind, value))

    @_op(pickle.GLOBAL)
    def global_op(self) -> None:
        module = self._line()
        self._name(module, self._line())

    def _line(self) -> str:
        end = self.data.find(b'\n', self.pos, self.pos + 256)
        if end < 0:
            raise _Refusal('a GLOBAL name longer than 256 bytes')
        text = self.read(end - self.pos).decode('ascii')
        self.read(1)
        return text

    @_op(pickle.STACK_GLOBAL)
    def stack_global(self) -> None:
        name, module = self.pop(), self.pop()
        if type(name) is not str or type(module) is not str:
            raise _Refusal('STACK_GLOBAL of non-strings')
        self._name(module, name)

    def _callee(self) -> _Name:
        func = self.pop()
        if type(func) is not _Name:
            raise _Refusal(f'call of {_short(func)}')
        return func

    @_op(pickle.REDUCE)
    def reduce(self) -> None:
        args = self.pop()
        func = self._callee()
        if type(args) is not tuple:
            raise _Refusal(f'{func!r} called with {_short(args)}')
        self.push(self._call(func, args))

    @_op(pickle.NEWOBJ)
    def newobj(self) -> None:
        args = self.pop()
        cls = self._callee()
        if cls.kind != 'history_buffer' or args != ():
            raise _Refusal(f'NEWOBJ {cls!r}{_short(args)}: only '
                           f'HistoryBuffer.__new__ is read')
        self.push(_Pending('history_buffer', None))

    def _call(self, func: _Name, args: tuple) -> Any:
        kind = func.kind
        if kind == 'ordered_dict' and args == ():
            return collections.OrderedDict()
        if kind == 'counter' and len(args) == 1 and type(args[0]) is dict:
            # mmengine's MultiStepParamScheduler keeps its milestones so
            return collections.Counter(_plain(args[0], 'a Counter'))
        if kind == 'tensor':
            return self._tensor(*args)
        if kind == 'parameter' and len(args) == 3:
            data, requires_grad, hooks = args
            if type(data) is not torch.Tensor or type(requires_grad) is not bool:
                raise _Refusal('_rebuild_parameter of a non-tensor')
            _empty_hooks(hooks)
            return torch.nn.Parameter(data, requires_grad)
        if kind == 'size' and len(args) == 1:
            return torch.Size(_ints(args[0], 'torch.Size'))
        if kind == 'device' and 1 <= len(args) <= 2 and type(args[0]) is str:
            text = args[0] if len(args) == 1 else (
                f'{args[0]}:{_int(args[1], "device index", 0, 9999)}')
            if _LOCATION.match(text):
                return torch.device(text)
        if kind == 'set' and len(args) <= 1:
            items = args[0] if args else ()
            if type(items) in (list, tuple):
                return func.value(items)
        if kind == 'complex' and len(args) == 2 and all(
                type(a) in (int, float) for a in args):
            return complex(*args)
        if kind == 'slice' and len(args) == 3 and all(
                a is None or type(a) is int for a in args):
            return slice(*args)
        if kind == 'bytes' and args == ():
            return b''
        if kind == 'encode' and len(args) == 2 and type(
                args[0]) is str and args[1] in ('latin1', 'latin-1'):
            return args[0].encode('latin-1')
        if kind == 'getattr' and len(args) == 2 and type(
                args[0]) is _Name and args[0].kind == 'history_buffer' and (
                    args[1] in _STATISTICS):
            return _Statistic(args[1])
        if kind == 'np_reconstruct' and len(args) == 3 and type(
                args[0]) is _Name and args[0].kind == 'np_ndarray' and args[
                    1] == (0, ) and args[2] == b'b':
            return _Pending('np_array', None)
        if kind == 'np_dtype' and len(args) == 3 and args[1:] == (False,
                                                                 True):
            return _Pending('np_dtype', args[0])
        if kind == 'np_frombuffer' and len(args) == 4 and args[3] in ('C',
                                                                       'F'):
            # numpy's pickle protocol 5: _frombuffer(data, dtype, shape, order)
            raw = bytes(args[0]) if type(args[0]) is bytearray else args[0]
            return _numpy_array(None, (1, args[2], args[1], args[3] == 'F',
                                       raw))
        if kind == 'np_scalar' and len(args) == 2:
            dtype, raw = args
            if isinstance(dtype, np.dtype) and type(raw) is bytes and len(
                    raw) == dtype.itemsize:
                return np.frombuffer(_booleans(raw, dtype), dtype=dtype)[0]
        raise _Refusal(f'{func!r}{_short(args) if len(args) != 1 else "(" + _short(args[0]) + ",)"}'
                       f' is not a call a checkpoint makes')

    def _tensor(self, storage: Any = None, offset: Any = None,
                size: Any = None, stride: Any = None,
                requires_grad: Any = None, hooks: Any = None,
                metadata: Any = None) -> torch.Tensor:
        if type(storage) is not _Storage:
            raise _Refusal(f'_rebuild_tensor_v2 of {_short(storage)} (a '
                           f'storage expected)')
        offset = _int(offset, 'a tensor offset')
        size, stride = _ints(size, 'a tensor size'), _ints(stride,
                                                           'a tensor stride')
        if len(size) != len(stride) or type(requires_grad) is not bool:
            raise _Refusal('a tensor with size, stride or requires_grad '
                           'malformed')
        _empty_hooks(hooks)
        if metadata not in (None, {}):
            raise _Refusal(f'a tensor with metadata {_short(metadata)}')
        count = int(np.prod(size, dtype=object))
        if count:
            last = offset + sum((s - 1) * st for s, st in zip(size, stride))
            if last >= storage.numel or count > storage.numel:
                raise _Refusal(
                    f'a tensor of size {size}, stride {stride} and offset '
                    f'{offset} outside its storage of {storage.numel} '
                    f'elements')
        tensor = torch.empty(0, dtype=storage.dtype,
                             device=storage.data.device).set_(
                                 storage.data.untyped_storage(), offset, size,
                                 stride)
        tensor.requires_grad_(requires_grad)
        return tensor

    @_op(pickle.BUILD)
    def build(self) -> None:
        state = self.pop()
        target = self.stack[-1]
        if type(target) is _Pending:
            if target.kind == 'np_dtype':
                built = _numpy_dtype(target.args, state)
            elif target.kind == 'np_array':
                built = _numpy_array(target.args, state)
            else:
                built = _history_buffer(state)
            self.stack[-1] = built
            for key in self.memo_keys.pop(id(target), []):
                self.memo[key] = built
            return
        if (type(target) is collections.OrderedDict
                and not _attrs(target) and type(state) is dict
                and set(state) == {'_metadata'}):
            target._metadata = _plain(state['_metadata'],
                                      'an OrderedDict\'s _metadata')
            return
        raise _Refusal(f'BUILD of {_short(target)} with {_short(state)}: '
                       f'attributes are set only on numpy dtypes and '
                       f'arrays, HistoryBuffer and a state_dict\'s '
                       f'_metadata')

    @_op(pickle.BINPERSID)
    def binpersid(self) -> None:
        pid = self.pop()
        if (type(pid) is not tuple or len(pid) != 5 or pid[0] != 'storage'
                or type(pid[1]) is not _Name
                or pid[1].kind != 'storage_type' or type(pid[2]) is not str
                or type(pid[3]) is not str):
            raise _Refusal(f'persistent id {_short(pid)} (torch storages '
                           f'only)')
        _, storage_type, key, location, numel = pid
        if not re.fullmatch(r'\d{1,12}', key) or not _LOCATION.match(
                location):
            raise _Refusal(f'storage key {key!r} / location {location!r}')
        numel = _int(numel, 'a storage size')
        self.push(self.load_storage(storage_type.value, key, location, numel))


# --------------------------------------------------------------------------
# Second fence: what a parsed checkpoint may hold

MAX_DEPTH = 100
_LEAVES = (str, bytes, int, float, bool, type(None), complex, torch.dtype,
           torch.device, torch.Size, torch.Tensor, torch.nn.Parameter)
_CONTAINERS = (dict, collections.OrderedDict, collections.Counter, list,
               tuple, set, frozenset)


def check_parsed(value: Any) -> None:
    """Refuse anything :class:`_PickleMachine` should never have built.

    Walks iteratively: containers (and an ``OrderedDict``'s ``_metadata``),
    ``slice`` bounds and ``HistoryBuffer`` histories; every leaf must be of
    a listed type, numpy values numeric, nesting at most :data:`MAX_DEPTH`.

    Raises:
        _Refusal: Names the object.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    stack, seen = [(value, 0)], set()
    while stack:
        item, depth = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if depth > MAX_DEPTH:
            raise _Refusal(f'values nested more than {MAX_DEPTH} deep')
        kind = type(item)
        children: Any = ()
        if kind in _CONTAINERS:
            children = item
            if isinstance(item, dict):
                children = [*item.keys(), *item.values(),
                            *_attrs(item).values()]
                if set(_attrs(item)) - {'_metadata'}:
                    raise _Refusal(f'a dict with attributes '
                                   f'{sorted(_attrs(item))}')
        elif kind is slice:
            children = (item.start, item.stop, item.step)
        elif kind is HistoryBuffer:
            children = (item._log_history, item._count_history)
        elif kind is np.ndarray or isinstance(item, np.generic):
            if item.dtype.str.lstrip('<>|=') not in _NUMPY_CODES:
                raise _Refusal(f'a numpy value of dtype {item.dtype}')
        elif isinstance(item, np.dtype):
            if item.str.lstrip('<>|=') not in _NUMPY_CODES:
                raise _Refusal(f'a numpy dtype {item}')
        elif kind not in _LEAVES or (isinstance(item, torch.Tensor)
                                     and _attrs(item)):
            raise _Refusal(f'an object of type {kind.__module__}.'
                           f'{kind.__qualname__}')
        stack.extend((child, depth + 1) for child in children)


# --------------------------------------------------------------------------
# Entry point


def _restorer(map_location: MapLocation) -> Callable:
    """``(uint8 tensor, dtype, location) -> tensor`` like torch.load's
    ``map_location`` (torch 2.13 ``_get_restore_location``)."""
    if map_location is None:
        target = None
    elif isinstance(map_location, (str, torch.device)):
        target = str(map_location)
    elif isinstance(map_location, dict):
        target = map_location
    elif callable(map_location):

        def call(data, dtype, location):
            typed = torch.storage.TypedStorage(
                wrap_storage=data.untyped_storage(), dtype=torch.uint8,
                _internal=True)
            moved = map_location(typed, location)
            moved = getattr(moved, '_untyped_storage', moved)
            return torch.empty(0, dtype=torch.uint8,
                               device=moved.device).set_(moved)

        return call
    else:
        raise TypeError(f'map_location {map_location!r}')

    def restore(data, dtype, location):
        where = target.get(location, location) if isinstance(
            target, dict) else (target or location)
        if where == 'cpu':
            return data
        typed = torch.storage.TypedStorage(
            wrap_storage=data.untyped_storage(), dtype=torch.uint8,
            _internal=True)
        moved = torch.serialization.default_restore_location(typed, where)
        return torch.empty(0, dtype=torch.uint8,
                           device=moved.device).set_(moved._untyped_storage)

    return restore


def parse_checkpoint(source: Union[str, os.PathLike, bytes, BinaryIO],
                     map_location: MapLocation = None,
                     name: Optional[str] = None) -> Any:
    """Read a ``torch.save`` checkpoint without executing anything in it.

    Args:
        source (str | PathLike | bytes | file): A path, the file's bytes or
            a seekable binary file.
        map_location: As :func:`torch.load` (``None``: where each storage
            was saved; ``'cpu'``, a device, a ``{saved: target}`` dict or a
            callable ``(storage, location) -> storage``).
        name (str, optional): How errors name the file (default: the path).

    Returns:
        The checkpoint: dicts, lists, tuples, numbers, strings, tensors,
        parameters, numpy arrays and scalars, ``HistoryBuffer`` objects.

    Raises:
        UnsafeCheckpointError: The pickle holds an object, call, attribute
            or opcode outside the table above, or a malformed value; the
            message names the file, the object and the byte offset.
        NotACheckpointError: Not a ``torch.save`` zip archive, truncated or
            damaged (a CRC mismatch); the message names the file.
    """
    if isinstance(source, (str, os.PathLike)):
        name = name or os.fspath(source)
        with open(source, 'rb') as stream:
            return parse_checkpoint(stream, map_location, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return parse_checkpoint(io.BytesIO(source), map_location, name)
    name = name or repr(source)
    restore = _restorer(map_location)
    storages: Dict[str, _Storage] = {}
    with _named_errors(name):
        archive = _open_archive(source, name)
        data = archive.read_small('data.pkl')

        def load_storage(dtype, key, location, numel):
            nbytes = numel * torch.empty(0, dtype=dtype).element_size()
            if key in storages:
                known = storages[key]
                if known.dtype != dtype or known.numel != numel:
                    raise _Refusal(f'storage {key!r} read as two dtypes or '
                                   f'sizes')
                return known
            raw = archive.read_storage(key, nbytes)
            storages[key] = _Storage(restore(raw, dtype, location), dtype,
                                     numel)
            return storages[key]

        parsed = _PickleMachine(data, load_storage).run()
        check_parsed(parsed)
        return parsed


def check_archive(path: Union[str, os.PathLike]) -> None:
    """Check cheaply that ``path`` is a ``torch.save`` archive: a zip of
    uncompressed members with one ``<archive>/data.pkl``, read from its
    directory and member headers only (nothing unpickled, CRCs and tensors
    not read). For refusing a file that is no checkpoint (an image, a
    folder's config) before a run is built.

    Raises:
        NotACheckpointError: Not such an archive (or legacy format); names
            the file.
        UnsafeCheckpointError: An archive :func:`parse_checkpoint` refuses
            (compressed or encrypted members, overlaps).
    """
    name = os.fspath(path)
    with open(path, 'rb') as stream, _named_errors(name):
        _open_archive(stream, name)


def _open_archive(source: BinaryIO, name: str) -> _Archive:
    """The archive of ``source``; a legacy (pickle) file is named as such."""
    head = source.read(4)
    source.seek(0)
    if head[:2] == b'\x80\x02':
        raise NotACheckpointError(
            f'Could not read checkpoint {name}: it is in torch\'s legacy '
            f'(pre-1.6) format, which is not parsed; re-save it with '
            f'torch.save of a current torch')
    return _Archive(source, name)


@contextlib.contextmanager
def _named_errors(name: str) -> Iterator[None]:
    """Internal and file-format errors as :class:`UnsafeCheckpointError` or
    :class:`NotACheckpointError` naming the file."""
    try:
        yield
    except _Refusal as err:
        raise UnsafeCheckpointError(f'Refusing to load checkpoint {name}: '
                                    f'{err}') from None
    except NotACheckpointError:
        raise
    except (_Damaged, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError,
            EOFError, OSError, struct.error, NotImplementedError) as err:
        raise NotACheckpointError(
            f'Could not read checkpoint {name} (not a torch checkpoint, '
            f'truncated or damaged): {type(err).__name__}: {err}') from None
