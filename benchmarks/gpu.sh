#!/usr/bin/env bash
# The GPU measurement, in stages that each fit well inside one 10-minute device command.
#   here:    bash benchmarks/fetch_gpu_wheels.sh           (wheels the GPU image lacks -> .whl/)
#   device:  run(command="bash benchmarks/gpu.sh tests throughput numerics cifar", carry=[".whl"])
#            run(command="bash benchmarks/gpu.sh compile imagenet_r rapf proof", carry=[".whl"])
#   (each call ends by printing summarize.py's table of what $OUT holds, so output_tail shows it)
#   here:    copy the returned files to benchmarks/results/<date>-<gpu>/, then
#            python benchmarks/summarize.py benchmarks/results/<date>-<gpu>/
# Stages (no argument: all of them, more than one command's limit):
#   tests       the test suite on the GPU machine (tests/test_cuda.py runs there, not in CI)
#   throughput  train-step / eval / preprocessing img/s, fast vs reference
#   compile     the same fast path with torch.compile
#   cifar       end to end, CIFAR-100 B0 Inc10 stand-in (reference: first 3 tasks)
#   imagenet_r  end to end, ImageNet-R-shaped JPEG folders (reference: first 3 tasks)
#   numerics    bf16 vs the default numerics: features, gap per probe epoch, E, accuracies
#   rapf, proof RAPF / PROOF end to end, CIFAR-100 stand-in, ours vs the official cost structure (reference: first 2 tasks)
#   l2p, dualprompt, coda  the prompt methods end to end, 5 epochs per task (official: 20), query cache vs none
# Extra options for end_to_end.py go in E2E_ARGS (e.g. E2E_ARGS="--reference-tasks 0").
# Each stage's JSON and log land in $OUT (benchmarks/results/ when OUT is unset).
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || { echo "wheel install failed: run benchmarks/fetch_gpu_wheels.sh first"; exit 1; }
export PYTHONUNBUFFERED=1
OUT_DIR="${OUT:-benchmarks/results}"
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests throughput compile numerics cifar imagenet_r rapf proof)
status=0
for stage in "${stages[@]}"; do
  echo "== $stage ($(date +%T))"
  case "$stage" in
    tests)      python3 -m pytest -q tests -p no:cacheprovider 2>&1 | tee "$OUT_DIR/tests.log" | tail -15 ;;
    throughput) python3 benchmarks/throughput.py --profile --out "$OUT_DIR/throughput.json" ;;
    compile)    python3 benchmarks/throughput.py --compile --no-reference --out "$OUT_DIR/throughput_compiled.json" ;;
    numerics)   python3 benchmarks/numerics.py --out "$OUT_DIR/numerics.json" ;;
    rapf|proof) python3 benchmarks/methods_end_to_end.py --method "$stage" --out "$OUT_DIR/${stage}_end_to_end.json" ;;
    l2p|dualprompt|coda) python3 benchmarks/methods_end_to_end.py --method "$stage" --epochs 5 --reference-tasks 1 \
                  --out "$OUT_DIR/${stage}_end_to_end.json" ;;
    cifar|imagenet_r)
                python3 benchmarks/end_to_end.py --workloads "$stage" ${E2E_ARGS:-} --out "$OUT_DIR/end_to_end_$stage.json" ;;
    *)          echo "unknown stage '$stage' (tests, throughput, compile, numerics, cifar, imagenet_r, rapf, proof, l2p, dualprompt, coda)"; exit 2 ;;
  esac
  rc=$?
  [ $rc -ne 0 ] && { echo "stage $stage failed (exit $rc)"; status=$rc; }
done
echo "== done ($(date +%T)); the figures so far against the targets:"
python3 benchmarks/summarize.py "$OUT_DIR" || true
exit $status
