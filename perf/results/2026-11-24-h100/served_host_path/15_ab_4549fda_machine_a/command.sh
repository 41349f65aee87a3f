#!/usr/bin/env bash
# scratch (not committed): b27d73a (base) vs 4549fda (response threads, no sleep(0), cancellation watcher)
set -x
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R
A="--shapes 128x512 --concurrency 128,256"
DEADLINE=200 BENCH_ARGS="--shapes 128x512 --concurrency 128 --skip perf_analyzer,hf --server-param response_threads=1" OUT=$R/new_rt1_offline bash perf/run_gpu_bench.sh > $R/new_rt1_offline_stdout.txt 2>&1
(cd base_tree && ln -sf ../.device-bundle .device-bundle && GIT_COMMIT=b27d73a PYTHONPATH=/tmp/site:$PWD DEADLINE=165 \
  BENCH_ARGS="$A --skip offline,perf_analyzer,hf" OUT=$R/base bash perf/run_gpu_bench.sh > $R/base_stdout.txt 2>&1)
for n in 1 4 2; do
DEADLINE=165 BENCH_ARGS="$A --skip offline,perf_analyzer,hf --server-param response_threads=$n" OUT=$R/new_rt$n bash perf/run_gpu_bench.sh > $R/new_rt${n}_stdout.txt 2>&1
done
rm -rf $R/*/server $R/*/repo
find $R -name '*_export.json' -delete; find $R -name 'inputs_*.json' -delete
tar czf $OUT/res.tgz -C $OUT res
