#!/usr/bin/env bash
# The serving benchmark in ONE command (device tool run, < 9 minutes on one H100):
#   here:       bash tools/device_bundle.sh            (once; carry .device-bundle)
#   device run: bash perf/run_gpu_bench.sh             (results in $OUT)
#   CPU smoke:  SMOKE=1 bash perf/run_gpu_bench.sh     (tiny model, KIND_CPU, concurrency 1,4; ~3 min)
# Builds the Llama-3.2-1B-shaped random model, measures the offline engine and copy bandwidth, serves
# the model with the real tritonserver (KIND_GPU), runs perf/loadgen.py at concurrency 1..256 for
# (128 in, 512 out) and (1024 in, 128 out), perf_analyzer at two concurrencies, the HF transformers
# baseline, and writes $OUT/serving.json (+ report.md, PNG plots, every phase's JSON and log).
# See perf/gpu_bench.py for the phases and their time budgets. Env: OUT, SMOKE=1, DEADLINE (seconds
# for the Python part, default 480), BENCH_ARGS (extra perf.gpu_bench arguments).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONUNBUFFERED=1
SMOKE=${SMOKE:-0}
T_START=$SECONDS

if [ "$SMOKE" = 1 ]; then
  OUT=${OUT:-perf/results/$(date +%F)-cpu-smoke}
  # The CPU machines' environment: .venv first on PATH (the Python backend's stub uses that python3).
  [ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"
  [ -d .venv/lib/perf_analyzer ] && export LD_LIBRARY_PATH="$PWD/.venv/lib/perf_analyzer:${LD_LIBRARY_PATH:-}"
  ARGS="--smoke"
  DEADLINE=${DEADLINE:-420}
else
  # tritonserver, perf_analyzer, tritonclient and numpy 1.26 from the device bundle (idempotent).
  if [ -z "${TRITON_SERVER_DIR:-}" ] || [ ! -x "${TRITON_SERVER_DIR}/bin/tritonserver" ]; then
    echo "== unpacking the device bundle"
    source tools/device_unpack.sh
  fi
  GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '-' | tr -cd '[:alnum:]-')
  OUT=${OUT:-perf/results/$(date +%F)-${GPU:-gpu}}
  ARGS=""
  DEADLINE=${DEADLINE:-480}
fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv > "$OUT/gpu.txt" 2>/dev/null || true
# The served path is host-bound (the Python backend's stub), and machines of one GPU kind differ by
# 10-30% in it: keep the host's CPU with every run.
{ lscpu 2>/dev/null || cat /proc/cpuinfo; } > "$OUT/cpu.txt"
echo "== python3: $(command -v python3) ; out: $OUT ; setup took $((SECONDS - T_START))s"
# The device tool stops a command at 10 minutes: keep a hard stop below that.
timeout --signal=TERM --kill-after=15 $((DEADLINE + 45)) \
  python3 -m perf.gpu_bench --out "$OUT" --deadline "$DEADLINE" $ARGS ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_log.txt"
rc=${PIPESTATUS[0]}
echo "== perf/run_gpu_bench.sh: rc=$rc in $((SECONDS - T_START))s; results in $OUT"
ls -la "$OUT"
exit $rc
