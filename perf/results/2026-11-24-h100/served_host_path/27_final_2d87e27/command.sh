#!/usr/bin/env bash
# device call 13 (scratch, not committed): the full serving bench at 2d87e27 (4 response threads by default) on a
# fresh machine, then response_threads 4 vs 8 (two runs each) on the same machine
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R
DEADLINE=380 OUT=$R/serving bash perf/run_gpu_bench.sh > $R/serving_stdout.txt 2>&1
A="--shapes 128x512 --concurrency 128,256 --skip offline,perf_analyzer,hf"
for round in 1 2; do
  for rt in 4 8; do
    DEADLINE=140 BENCH_ARGS="$A --server-param response_threads=$rt" OUT=$R/rt${rt}_$round timeout 180 bash perf/run_gpu_bench.sh > $R/rt${rt}_${round}_stdout.txt 2>&1
  done
done
