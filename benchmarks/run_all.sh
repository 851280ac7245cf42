#!/usr/bin/env bash
# Runs the PromptOnce benchmarks that write benchmarks/results/*.json, one after the other (they share the CPU).
#   benchmarks/run_all.sh            throughput (~3-6 min on a busy 2-core CPU) + robustness (<= 10 min, needs ../shared/data)
#   QUICK=1 benchmarks/run_all.sh    the fake backend only, a plumbing check (seconds; JSON to $TMPDIR, not results/)
# Each script documents its options: .venv/bin/python benchmarks/<script>.py --help
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
if [[ "${QUICK:-0}" == "1" ]]; then
  "$PY" benchmarks/throughput.py --models fake --out "${TMPDIR:-/tmp}/throughput_quick.json"
  "$PY" benchmarks/robustness.py --model fake --cases 3 --out "${TMPDIR:-/tmp}/robustness_quick.json"
else
  "$PY" benchmarks/throughput.py
  "$PY" benchmarks/robustness.py
fi
