#!/usr/bin/env bash
# Everything measured in one device-tool call (fits its 10-minute limit on an H100):
# GPU e2e check + engine decode bench, scheduler bench, then the serving bench with a shortened
# deadline. All results are packed into $OUT/results.tgz (the tool brings back at most 8 files).
#   device run:  GIT_COMMIT=<sha> bash perf/run_device_all.sh      (carry .device-bundle)
set -uo pipefail
RES=/tmp/res; rm -rf "$RES"; mkdir -p "$RES"
export PYTHONUNBUFFERED=1
source tools/device_unpack.sh
SKIP_KERNEL_TESTS=1 SKIP_BENCH_KERNELS=1 OUT=$RES bash perf/run_gpu_checks.sh 2>&1 | grep -v "Loading weights\|it/s\]"
echo "=== scheduler bench"
timeout 150 python3 perf/bench_scheduler.py --out "$RES" 2>&1 | tail -25
echo "=== serving bench"
OUT=$RES/serving DEADLINE=${SERVING_DEADLINE:-240} bash perf/run_gpu_bench.sh 2>&1 | tail -40
tar -czf "${OUT:-/tmp}/results.tgz" -C "$RES" .
