#!/usr/bin/env bash
# The main job: set up .venv if needed, then synthetic lung CT -> train -> evaluate -> infer -> summary.
# Extra arguments go to `monai-pipeline demo` (e.g. --out DIR --epochs N).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/monai-pipeline demo "$@"
