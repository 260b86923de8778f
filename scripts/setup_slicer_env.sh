#!/usr/bin/env bash
# Create .venv-slicer with 3D Slicer's own MRML readers (PyPI slicer-core, no Qt) for tests/slicer_probe.py
# and tests/test_slicer_core.py. slicer-core pins vtk==9.6.2, which conflicts with the main venv's VTK, so it
# lives in a venv of its own (~1 GB with VTK; ~20 s from this project's local package mirrors).
# Optional: when it cannot be installed (no wheel for this platform, no network) it prints one warning line,
# exits 0, and those tests skip. Idempotent: it installs only when the venv is missing or broken, or when
# the requirement below changed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SLICER_REQ="slicer-core==5.13.31053.0 numpy"
VENV=.venv-slicer
stamp=$VENV/.slicer_core_installed
log=$VENV-install.log
if [ -f "$stamp" ] && [ "$(cat "$stamp")" == "$SLICER_REQ" ] && "$VENV/bin/python" -c "import slicer" 2>/dev/null; then
    exit 0
fi
echo "[setup] installing $VENV ($SLICER_REQ)"
rm -f "$stamp"
# shellcheck disable=SC2086  # SLICER_REQ is a list of requirements
if { [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" >"$log" 2>&1; } \
        && "$VENV/bin/python" -m pip install --quiet $SLICER_REQ >>"$log" 2>&1 \
        && "$VENV/bin/python" -c "import slicer, slicer.util" >>"$log" 2>&1; then
    echo "$SLICER_REQ" > "$stamp"
    rm -f "$log"
else
    echo "[setup] WARNING: $VENV (slicer-core) could not be installed; tests/test_slicer_core.py will skip (see $log)"
fi
exit 0
