#!/usr/bin/env bash
# Create .venv (if missing) and install what is missing: torch==2.13.0 first (CPU build from local disk
# on this project's machines; any other torch request would fetch a multi-GB CUDA build), then the package
# with its [dev] extra. Safe to run repeatedly: it only installs when something is missing or setup.cfg changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
    echo "[setup] installing torch==2.13.0 (first, so nothing else pulls another build)"
    "$VPY" -m pip install --quiet --upgrade pip
    "$VPY" -m pip install --quiet "torch==2.13.0"
fi
stamp=.venv/.monai_pipeline_installed
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$VPY" -c "import monai_pipeline, monai, pytest" 2>/dev/null; then
    echo "[setup] installing monai-pipeline and its dependencies"
    "$VPY" -m pip install --quiet -e ".[dev]"
    echo "$want" > "$stamp"
fi
# optional second venv with 3D Slicer's own readers (never fails the setup)
bash scripts/setup_slicer_env.sh || echo "[setup] WARNING: scripts/setup_slicer_env.sh failed; the Slicer reader tests will skip"
