"""Show the progress of a compiled build from its verbose log.

Usage: ``pip wheel -v ... 2>&1 | python3 -u scripts/build_progress.py LOG``

Every input line is written to ``LOG``; the terminal (stderr) gets one line
per finished compile unit, ``[12/78] carafe.cpp, ~ 11 min left``, plus
compiler errors and pip's final verdict. ninja prints ``[done/total]`` when a
unit finishes; ``pip -v`` indents the output of the build it runs, so the
status lines do not start at the beginning of the line.
"""
import os.path as osp
import re
import sys
import time
from typing import Optional

STATUS = re.compile(r'^\s*\[(\d+)/(\d+)\]\s+(.*)$')
SOURCE = re.compile(r'(\S+\.(?:cpp|cu|cc|c))(?:\s|$)')
VERDICT = re.compile(r'error:|Successfully built|Failed to build')


def progress_line(line: str, elapsed_s: float) -> Optional[str]:
    """The terminal line for one log line, or None to show nothing.

    Args:
        line (str): One line of the build log (trailing newline allowed).
        elapsed_s (float): Seconds since the build started; the estimate
            assumes the remaining units take as long on average as the
            finished ones.

    Returns:
        str | None: ``[done/total] source, ~ M min left`` for a ninja status
        line (the source is the last ``.cpp``/``.cu``/``.c`` named on it), the
        stripped line for a compiler error or pip's verdict, else None.
    """
    line = line.rstrip('\n')
    status = STATUS.match(line)
    if status:
        done, total = int(status.group(1)), int(status.group(2))
        sources = SOURCE.findall(status.group(3))
        name = osp.basename(sources[-1]) if sources else 'linking'
        if done >= total:
            return f'[{done}/{total}] {name}, done'
        left_min = elapsed_s / max(done, 1) * (total - done) / 60
        return f'[{done}/{total}] {name}, ~ {max(round(left_min), 1)} min left'
    if VERDICT.search(line):
        return line.strip()
    return None


def main(log_path: str) -> int:
    start = time.monotonic()
    with open(log_path, 'w') as log:
        for line in sys.stdin:
            log.write(line)
            log.flush()
            shown = progress_line(line, time.monotonic() - start)
            if shown is not None:
                stamp = time.strftime('%H:%M:%S')
                print(f'[setup_env {stamp}]   {shown}', file=sys.stderr,
                      flush=True)
    return 0


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
