#!/usr/bin/env bash
# One device-tool run: GPU correctness (kernels at real shapes, served model vs transformers) and
# the kernel/engine benchmarks. Results go to $OUT (or perf/results/latest).
#   device run:  bash perf/run_gpu_checks.sh     (carry .device-bundle, made by tools/device_bundle.sh)
set -uo pipefail
OUT=${OUT:-perf/results/latest}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
source tools/device_unpack.sh
python3 -c "import numpy, torch, transformers, tritonclient; print(\"numpy\", numpy.__version__, \"torch\", torch.__version__, \"transformers\", transformers.__version__)" && which tritonserver perf_analyzer
$SERVER_PYTHON_BIN/python -c "import numpy, torch, tokenizers, safetensors; print(\"server env: numpy\", numpy.__version__, \"torch\", torch.__version__)"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
status=0
step() { echo "=== $*"; local t0=$SECONDS; "$@" 2>&1 | tee -a "$OUT/log.txt"; local rc=${PIPESTATUS[0]}; echo "=== rc=$rc in $((SECONDS-t0))s: $*"; [ $rc = 0 ] || status=1; }
[ "${SKIP_E2E:-0}" = 1 ] || step python3 perf/gpu_e2e_check.py --out "$OUT"
[ "${SKIP_KERNEL_TESTS:-0}" = 1 ] || step python3 -m pytest -q -x ${GPU_TESTS:-tests/kernels tests/engine/test_cuda_graphs.py tests/engine/test_async_scheduling.py}
[ "${SKIP_BENCH_KERNELS:-0}" = 1 ] || step python3 perf/bench_kernels.py --out "$OUT"
[ "${SKIP_BENCH_ENGINE:-0}" = 1 ] || step python3 perf/bench_engine.py --size llama-3.2-1b --tag 1b --out "$OUT" ${ENGINE_ARGS:-}
[ "${WITH_SCHEDULER:-0}" = 1 ] && step python3 perf/bench_scheduler.py --out "$OUT"
exit $status
