#!/usr/bin/env bash
# scratch (not committed): A/B of queued metrics (HEAD~1 = 4eca593 vs HEAD) on one machine
set -x
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R
A="--skip perf_analyzer,hf --shapes 128x512 --concurrency 1,128,256"
(cd base_tree && ln -sf ../.device-bundle .device-bundle && GIT_COMMIT=4eca593 PYTHONPATH=/tmp/site:$PWD DEADLINE=170 \
  BENCH_ARGS="$A" OUT=$R/base bash perf/run_gpu_bench.sh > $R/base_stdout.txt 2>&1)
DEADLINE=170 BENCH_ARGS="$A" OUT=$R/new bash perf/run_gpu_bench.sh > $R/new_stdout.txt 2>&1
tar czf $OUT/res.tgz -C $OUT res
