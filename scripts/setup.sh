#!/usr/bin/env bash
# Creates .venv in the repo root and installs PromptOnce with everything it needs (idempotent).
# Torch is installed first and pinned, so that no other package can pull in a different build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.promptonce-installed
want=$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
pip install -q "torch==2.14.1" "torchvision==0.29.1"
pip install -q -r requirements.txt
# sam2 compiles an optional CUDA extension; build it without CUDA and against the torch installed above.
SAM2_BUILD_CUDA=0 pip install -q --no-build-isolation "sam2==1.1.0"
pip install -q -r requirements-dev.txt
pip install -q --no-deps --no-build-isolation -e .
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.14.1'), torch.__version__"
# Export the CPU models to ONNX now (once per machine, ~1-2 min; verified against PyTorch), so that the
# app's first click does not wait for it. Optional: the app exports on first use, or runs on PyTorch.
for m in litemedsam mobilesam; do
  .venv/bin/python -m promptonce.backends.onnx_export export "$m" >/dev/null 2>&1 \
    || echo "note: ONNX export of $m failed; it will be retried on first use (PyTorch is the fallback)" >&2
done
echo "$want" > "$stamp"
