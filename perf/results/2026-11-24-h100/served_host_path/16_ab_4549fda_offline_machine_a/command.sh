#!/usr/bin/env bash
# scratch (not committed): offline engine and served (base b27d73a vs 4549fda rt1/rt4) on one machine
set -x
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/build.log 2>&1
python3 perf/bench_offline.py --model-dir /tmp/m1b --shapes 128x512 --concurrency 128,256 --max-model-len 2048 --budget 100 --out $R/offline.json > $R/offline_log.txt 2>&1
A="--shapes 128x512 --concurrency 128,256 --skip offline,perf_analyzer,hf"
DEADLINE=165 BENCH_ARGS="$A --server-param response_threads=1" OUT=$R/new_rt1 bash perf/run_gpu_bench.sh > $R/new_rt1_stdout.txt 2>&1
(cd base_tree && ln -sf ../.device-bundle .device-bundle && GIT_COMMIT=b27d73a PYTHONPATH=/tmp/site:$PWD DEADLINE=165 \
  BENCH_ARGS="$A" OUT=$R/base bash perf/run_gpu_bench.sh > $R/base_stdout.txt 2>&1)
DEADLINE=165 BENCH_ARGS="$A --server-param response_threads=4" OUT=$R/new_rt4 bash perf/run_gpu_bench.sh > $R/new_rt4_stdout.txt 2>&1
rm -rf $R/*/server $R/*/repo
find $R -name '*_export.json' -delete; find $R -name 'inputs_*.json' -delete
tar czf $OUT/res.tgz -C $OUT res
