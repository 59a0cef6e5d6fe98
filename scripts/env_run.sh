#!/usr/bin/env bash
# Run a command inside the cached m3i_mm environment (built on first use),
# with this checkout first on PYTHONPATH.  Usage: bash scripts/env_run.sh CMD ...
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(bash "$ROOT/scripts/setup_env.sh" | tail -n 1)"
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export M3I_VENV="$VENV"
# No downloads at run time: hubs cannot be reached.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$ROOT"
exec "$@"
