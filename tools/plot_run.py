"""Draw a training run's curves from its scalars.json (LocalVisBackend).

Panels: the target losses (``loss*``), the balancer (λ = ``lambda_sp``,
ḡ_uni = ``grad_norm_uni``, ḡ_multi = ``grad_norm_multi``) and the monitors'
held-out top-1 (``monitor/*``, :class:`m3i_mm.engine.hooks.M3IMonitorHook`),
against the iteration. The runs of a work dir (``TIMESTAMP/vis_data/
scalars.json``, one per start or resume) are read in order; a resumed run's
steps replace the ones it trains again.

Usage:
    python tools/plot_run.py WORK_DIR [--out PNG]  # WORK_DIR/curves.png

Prints the PNG's path. Exit status 2 and a message naming WORK_DIR when it
holds no run log.
"""
import argparse
import glob
import json
import os.path as osp
import sys
from typing import Dict, List

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

# (title, which keys, y scale): λ and the ḡ's differ by orders of magnitude.
PANELS = (
    ('losses', lambda key: key.startswith('loss'), 'linear'),
    ('balancer: λ, ḡ_uni, ḡ_multi',
     lambda key: key in ('lambda_sp', 'grad_norm_uni', 'grad_norm_multi'),
     'log'),
    ('held-out top-1 (%)', lambda key: key.startswith('monitor/'), 'linear'),
)


def run_logs(work_dir: str) -> List[str]:
    """The ``scalars.json`` of each run in ``work_dir``, oldest first.

    Raises:
        FileNotFoundError: None there, naming ``work_dir``.
    """
    logs = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                     'scalars.json')))
    if not logs:
        raise FileNotFoundError(
            f'no run log in {work_dir}: expected '
            f'{osp.join(work_dir, "TIMESTAMP", "vis_data", "scalars.json")} '
            f'(written by LocalVisBackend during tools/train.py)')
    return logs


def read_curves(logs: List[str]) -> Dict[str, Dict[int, float]]:
    """``{key: {step: value}}`` of every numeric scalar in ``logs``; a later
    log's value of a step replaces an earlier one's."""
    curves: Dict[str, Dict[int, float]] = {}
    for path in logs:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                row = json.loads(line)
                for key, value in row.items():
                    if key != 'step' and isinstance(value, (int, float)):
                        curves.setdefault(key, {})[row['step']] = value
    return curves


def plot(curves: Dict[str, Dict[int, float]], out: str) -> str:
    """Draw the non-empty :data:`PANELS` of ``curves`` to the PNG ``out``."""
    panels = [(title, sorted(k for k in curves if keep(k)), scale)
              for title, keep, scale in PANELS]
    panels = [panel for panel in panels if panel[1]]
    if not panels:
        raise ValueError(f'no loss, balancer or monitor scalars to plot '
                         f'(keys: {sorted(curves)})')
    fig, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False,
                             figsize=(8, 3 * len(panels)))
    for ax, (title, keys, scale) in zip(axes[:, 0], panels):
        for key in keys:
            steps = sorted(curves[key])
            ax.plot(steps, [curves[key][s] for s in steps],
                    marker='o' if len(steps) < 30 else None, label=key)
        ax.set_title(title)
        ax.set_yscale(scale)  # log leaves out the ḡ = 0 of step 1
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
    axes[-1, 0].set_xlabel('iteration')
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dir', help='tools/train.py --work-dir')
    parser.add_argument('--out', help='PNG (default WORK_DIR/curves.png)')
    args = parser.parse_args()
    try:
        curves = read_curves(run_logs(args.work_dir))
        out = plot(curves, args.out or osp.join(args.work_dir, 'curves.png'))
    except (FileNotFoundError, ValueError) as err:
        print(f'plot_run.py: {err}', file=sys.stderr)
        sys.exit(2)
    print(out)


if __name__ == '__main__':
    main()
