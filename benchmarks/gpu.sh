#!/usr/bin/env bash
# One command on a GPU machine: install the carried wheels, run both benchmarks, keep the JSON.
#   here:   bash benchmarks/fetch_gpu_wheels.sh
#   device: run(command="bash benchmarks/gpu.sh", carry=[".whl"])
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
OUT_DIR="${OUT:-benchmarks/results}"
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m pytest -q tests -x -k "not sigkill" 2>&1 | tail -3
python3 benchmarks/throughput.py --out "$OUT_DIR/throughput.json" "$@"
python3 benchmarks/end_to_end.py --out "$OUT_DIR/end_to_end.json"
