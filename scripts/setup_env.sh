#!/usr/bin/env bash
# Build (once) and print the path of the cached virtual environment for m3i_mm.
#
# Usage: bash scripts/setup_env.sh        # the venv path is the last line of stdout
#
# Cache layout (outside the work tree, shared by every clone, CI included):
#   $M3I_CACHE/wheels/onedl-mmcv-<ver>-torch<ver>-py<ver>/*.whl  compiled mmcv (~17-35 min)
#   $M3I_CACHE/venv-<key>/           the environment; key = hash of lock + mmcv + python
# M3I_CACHE defaults to ${XDG_CACHE_HOME:-~/.cache}/m3i_mm.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$ROOT/requirements/lock.txt"
PYTHON="${M3I_PYTHON:-python3}"
CACHE="${M3I_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/m3i_mm}"
MMCV_DIST="onedl-mmcv"
MMCV_VERSION="2.3.6"
SETUPTOOLS="setuptools==80.9.0"  # <82: mmcv's setup.py and mim need pkg_resources

log() { echo "[setup_env $(date +%H:%M:%S)] $*" >&2; }
# The machine's pip config points at a CPU-only torch wheel folder for which
# no torchvision exists: use the public index only.
pip_public() { env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null "$@"; }

PYVER="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
TORCH="$(sed -n 's/^torch==//p' "$LOCK")"
KEY="$( (cat "$LOCK"; echo "$MMCV_DIST==$MMCV_VERSION $SETUPTOOLS py$PYVER") | sha256sum | cut -c1-12)"
VENV="$CACHE/venv-$KEY"
WHEELS="$CACHE/wheels/$MMCV_DIST-$MMCV_VERSION-torch$TORCH-py$PYVER"

mkdir -p "$CACHE"
# One builder at a time; others wait and then reuse its result.
exec 9>"$CACHE/.lock"
if [ ! -f "$VENV/.complete" ] && ! flock -n 9; then
  log "another build holds $CACHE/.lock; waiting for it"
  flock 9
fi
if [ -f "$VENV/.complete" ]; then
  log "reusing cached environment $VENV"
  echo "$VENV"
  exit 0
fi

START=$(date +%s)
BUILD="$VENV.partial"
rm -rf "$BUILD"
log "creating virtual environment (python $PYVER) in $BUILD"
"$PYTHON" -m venv "$BUILD"
PY="$BUILD/bin/python"
pip_public "$PY" -m pip install -q --upgrade pip==25.2
log "installing $(grep -c '==' "$LOCK") pinned packages from requirements/lock.txt" \
    "(torch $TORCH with CUDA libraries: about 5 GB, a few minutes)"
pip_public "$PY" -m pip install -q --progress-bar off --no-deps -r "$LOCK" "$SETUPTOOLS" wheel==0.45.1
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  log "compiling $MMCV_DIST $MMCV_VERSION with CPU ops: 78 units, about 17 min on 2 cores (cached afterwards)"
  TMPW="$(mktemp -d "$CACHE/mmcv-build.XXXX")"
  # --no-build-isolation: mmcv's setup.py must see the installed torch, or
  # the ops are silently skipped.
  MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" pip_public "$PY" -m pip wheel -v --no-deps --no-cache-dir \
      --no-build-isolation -w "$TMPW" "$MMCV_DIST==$MMCV_VERSION" 2>&1 \
    | "$PYTHON" -u "$ROOT/scripts/build_progress.py" "$TMPW/build.log" || true
  ls "$TMPW"/*.whl >/dev/null 2>&1 || {
    tail -n 40 "$TMPW/build.log" >&2
    log "mmcv build failed (no wheel; full log: $TMPW/build.log)"; exit 1; }
  mv "$TMPW"/*.whl "$WHEELS"/ && rm -rf "$TMPW"
else
  log "reusing compiled mmcv wheel from $WHEELS"
fi
pip_public "$PY" -m pip install -q --no-deps "$WHEELS"/*.whl
"$PY" -c "import mmcv.ops, mmdet.models, mmseg.models, mmpretrain.models, transformers" >/dev/null \
  || { log "import check failed"; exit 1; }
"$PY" -m pip check >&2 || { log "pip check failed"; exit 1; }
touch "$BUILD/.complete"
rm -rf "$VENV"
mv "$BUILD" "$VENV"
# venvs hard-code their path in scripts and activate files; fix after the rename.
grep -rlI --exclude-dir=__pycache__ "$BUILD" "$VENV/bin" | xargs -r sed -i "s#$BUILD#$VENV#g"
log "environment ready in $(( ($(date +%s) - START) / 60 )) min: $VENV"
echo "$VENV"
