"""Start ``tools/train.py`` runs as forks of one process that imported them.

Importing torch + the OpenMMLab stack takes ~10 s per process here, too much
for tests that start a dozen training runs and ``kill -9`` them. This helper
imports once, then for each request forks a child that runs
``tools/train.py`` as ``__main__`` (its own argv, log file, exit code): a
separate real process that a test can kill.

Protocol (one JSON object per line on stdin, one reply per line on stdout):
``{"run": [args...], "log": path, "env": {...}, "umask": m, "kill_at": n}`` starts a run
and replies ``{"pid": pid}``; ``{"wait": pid}`` replies
``{"status": exit code or -signal}`` once the run has ended.

``kill_at`` (optional) is test-only fault injection: the run kills itself
with SIGKILL at the ``n``-th checkpoint file event of its saves (just before
and just after every create/rename/remove of a file named like
``iter_N.pth`` or ``last_checkpoint``, temporary files included, while
``CheckpointHook.after_train_iter`` runs).
"""
import builtins
import json
import os
import re
import runpy
import signal
import subprocess
import sys
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, 'tools', 'train.py')
# Runs get this umask: not the usual 022, so a hard-coded 0644 would show.
UMASK = 0o007
CKPT_FILE = re.compile(r'(iter|epoch)_\d+\.pth|last_checkpoint')


def _inject_kill(kill_at: int) -> None:
    """Kill this process at the ``kill_at``-th checkpoint file event of its
    saves (inside ``CheckpointHook.after_train_iter``), saying which."""
    from mmengine.hooks import CheckpointHook
    count, saving = [0], [False]

    def point(what: str, path) -> None:
        if saving[0] and isinstance(path, (str, bytes, os.PathLike)) and \
                CKPT_FILE.search(os.path.basename(os.fsdecode(path))):
            count[0] += 1
            if count[0] == kill_at:
                sys.stderr.write(f'fault injection: SIGKILL at event '
                                 f'{kill_at}, {what} {os.fsdecode(path)}\n')
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    def around(name: str, func, path_arg: int):

        def wrapped(*args, **kwargs):
            point(f'before {name}', args[path_arg])
            result = func(*args, **kwargs)
            point(f'after {name}', args[path_arg])
            return result

        return wrapped

    def opened(name: str, func):

        def wrapped(file, mode='r', *args, **kwargs):
            result = func(file, mode, *args, **kwargs)
            if any(m in mode for m in 'wax'):
                point(f'after {name}', os.readlink(f'/proc/self/fd/{file}')
                      if isinstance(file, int) else file)
            return result

        return wrapped

    def in_save(func):

        def wrapped(*args, **kwargs):
            saving[0] = True
            try:
                return func(*args, **kwargs)
            finally:
                saving[0] = False

        return wrapped

    for name in ('replace', 'rename'):
        setattr(os, name, around(name, getattr(os, name), 1))
    for name in ('remove', 'unlink'):
        setattr(os, name, around(name, getattr(os, name), 0))
    builtins.open = opened('open', builtins.open)
    os.fdopen = opened('fdopen', os.fdopen)
    CheckpointHook.after_train_iter = in_save(CheckpointHook.after_train_iter)


def _child(request: dict) -> int:
    log = os.open(request['log'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                  0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.update(request.get('env', {}))
    if request.get('umask') is not None:
        os.umask(request['umask'])
    import torch
    torch.set_num_threads(1)
    if request.get('kill_at'):
        _inject_kill(request['kill_at'])
    sys.argv = [TRAIN] + request['run']
    try:
        runpy.run_path(TRAIN, run_name='__main__')
        return 0
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


class Zygote:
    """Starts the zygote process and sends it requests (test side)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=REPO))

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + '\n')
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, args, log, kill_at=None) -> int:
        return self._ask(dict(run=args, log=str(log), kill_at=kill_at,
                              umask=UMASK))['pid']

    def wait(self, pid: int) -> int:
        return self._ask(dict(wait=pid))['status']

    def run(self, args, log, kill_at=None):
        """Run to the end; returns (exit code or -signal, log text)."""
        status = self.wait(self.start(args, log, kill_at))
        with open(log) as f:
            return status, f.read()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def main() -> None:
    # Replies only on the original stdout: imports print to fd 1.
    reply = os.fdopen(os.dup(1), 'w')
    os.dup2(2, 1)
    sys.path.insert(0, REPO)
    import mmengine.runner  # noqa: F401
    import torch  # noqa: F401

    import m3i_mm  # noqa: F401
    for line in sys.stdin:
        request = json.loads(line)
        if 'wait' in request:
            _, status = os.waitpid(request['wait'], 0)
            code = (-os.WTERMSIG(status) if os.WIFSIGNALED(status) else
                    os.WEXITSTATUS(status))
            answer = {'status': code}
        else:
            pid = os.fork()
            if pid == 0:
                os._exit(_child(request))
            answer = {'pid': pid}
        reply.write(json.dumps(answer) + '\n')
        reply.flush()


if __name__ == '__main__':
    main()
