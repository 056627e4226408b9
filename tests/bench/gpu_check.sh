#!/usr/bin/env bash
# The GPU check of issue 20 as one command on a fresh GPU machine (see tests/bench/gpu_check.py):
#   bash tests/bench/gpu_check.sh [OUT.json]
# Installs flowopd from this checkout (and its dependencies from the package registry) when it is not importable, then
# runs the full-size SD3.5-M, FLUX.1-dev and Qwen-Image check within its 8-minute budget. Without a GPU it prints
# "skipped: no CUDA device ..." and exits 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-gpu_check.json}"
if ! python -c "import flowopd, diffusers, peft" >/dev/null 2>&1; then
  echo "installing flowopd and its dependencies (pip install -e .)"
  python -m pip install --quiet -e . || { echo "error: pip install -e . failed; install torch for this GPU, then rerun"; exit 1; }
fi
python -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
exec python tests/bench/gpu_check.py --json "$out"
