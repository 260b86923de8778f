#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite. Extra arguments go to pytest
# (e.g. `-m slow` for the long real-data tests, `-m "not slow"` is the default selection).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest "$@"
