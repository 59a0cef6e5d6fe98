"""Parse mutated checkpoints; report each outcome (run in a subprocess).

    python tests/checkpoint_fuzz.py SEED START COUNT BASE.pth [BASE.pth ...]

Mutation ``i`` (``START <= i < START + COUNT``) is drawn from
``random.Random(SEED * 1_000_003 + i)``: a base file, then one of

- a byte flip, a truncation, or a stretch of random bytes in the file;
- inside ``data.pkl`` (the archive rewritten with correct CRCs, so the
  pickle reader sees it): a byte flip, an opcode replaced by another
  opcode, a ``GLOBAL`` name replaced by another name, a truncation.

One JSON line per mutation: ``{"i", "kind", "outcome"}``, ``outcome`` being
``"ok"``, the exception's type name, or ``"code"`` when an audit event of
running code or processes fired during the parse.
"""
import io
import json
import os.path as osp
import pickletools
import random
import sys
import zipfile

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from m3i_mm.engine.checkpoint import parse_checkpoint  # noqa: E402

CODE_EVENTS = ('os.system', 'subprocess.Popen', 'os.exec', 'os.spawn',
               'os.posix_spawn', 'os.fork', 'exec', 'compile', 'ctypes.',
               'builtins.input', 'socket.')
GLOBAL_NAMES = [
    b'os\nsystem', b'posix\nsystem', b'builtins\neval', b'__builtin__\nexec',
    b'builtins\ngetattr', b'builtins\nbytearray', b'numpy\ndtype',
    b'numpy.core.multiarray\n_reconstruct', b'torch._utils\n_rebuild_tensor_v2',
    b'collections\nOrderedDict', b'torch\nFloatStorage',
    b'mmengine.logging.history_buffer\nHistoryBuffer', b'builtins\nset',
    b'torch._tensor\n_rebuild_from_type_v2', b'subprocess\nPopen'
]
OPCODES = [op.code.encode('latin-1') for op in pickletools.opcodes]

fired = []


def _audit(event, args):
    if event.startswith(CODE_EVENTS):
        fired.append(event)


def _pickle_name(names):
    return next(n for n in names if n.endswith('/data.pkl'))


def _rezip(original: bytes, pickled: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(original)) as src, zipfile.ZipFile(
            out, 'w', zipfile.ZIP_STORED) as dst:
        name = _pickle_name(src.namelist())
        for info in src.infolist():
            dst.writestr(info.filename, pickled if info.filename == name
                         else src.read(info))
    return out.getvalue()


class Base:
    """A real checkpoint, its pickle and the pickle's opcode positions."""

    def __init__(self, path: str) -> None:
        with open(path, 'rb') as f:
            self.data = f.read()
        with zipfile.ZipFile(io.BytesIO(self.data)) as zf:
            self.pickled = zf.read(_pickle_name(zf.namelist()))
        self.ops = [pos for _, _, pos in pickletools.genops(self.pickled)]
        self.globals = [pos for op, _, pos in pickletools.genops(self.pickled)
                        if op.name == 'GLOBAL']


def mutate(base: Base, rng: random.Random):
    kind = rng.choice(['flip', 'truncate', 'noise', 'pkl-flip', 'pkl-opcode',
                       'pkl-global', 'pkl-truncate'])
    if not kind.startswith('pkl'):
        data = bytearray(base.data)
        pos = rng.randrange(len(data))
        if kind == 'flip':
            data[pos] ^= 1 << rng.randrange(8)
        elif kind == 'truncate':
            del data[pos:]
        else:
            data[pos:pos + 16] = rng.randbytes(16)
        return kind, bytes(data)
    pickled = bytearray(base.pickled)
    if kind == 'pkl-flip':
        pos = rng.randrange(len(pickled))
        pickled[pos] ^= 1 << rng.randrange(8)
    elif kind == 'pkl-opcode':
        pickled[rng.choice(base.ops)] = rng.choice(OPCODES)[0]
    elif kind == 'pkl-global' and base.globals:
        pos = rng.choice(base.globals)
        end = pickled.index(b'\n', pickled.index(b'\n', pos) + 1)
        pickled[pos + 1:end] = rng.choice(GLOBAL_NAMES)
    else:
        del pickled[rng.randrange(len(pickled)):]
    return kind, _rezip(base.data, bytes(pickled))


def main(seed: int, start: int, count: int, bases) -> None:
    files = [Base(path) for path in bases]
    sys.addaudithook(_audit)
    for i in range(start, start + count):
        rng = random.Random(seed * 1_000_003 + i)
        kind, data = mutate(rng.choice(files), rng)
        fired.clear()
        try:
            parse_checkpoint(data, 'cpu', name=f'mutation-{i}')
            outcome = 'ok'
        except Exception as err:  # reported, judged by the test
            outcome = type(err).__name__
        if fired:
            outcome = 'code'
        print(json.dumps(dict(i=i, kind=kind, outcome=outcome)), flush=True)


if __name__ == '__main__':
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
