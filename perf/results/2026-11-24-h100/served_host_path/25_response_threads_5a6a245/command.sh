#!/usr/bin/env bash
# device call 11 (scratch): response_threads 1 / 2 / 4 at 5a6a245 (admission thread), twice each, one machine
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/build.log 2>&1
python3 perf/bench_offline.py --model-dir /tmp/m1b --shapes 128x512 --concurrency 128,256 --max-model-len 2048 --budget 40 --out $R/offline.json > $R/offline_log.txt 2>&1
A="--shapes 128x512 --concurrency 128,256 --skip offline,perf_analyzer,hf"
for round in 1 2; do
  for rt in 1 2 4; do
    DEADLINE=140 BENCH_ARGS="$A --server-param response_threads=$rt" OUT=$R/rt${rt}_$round timeout 180 bash perf/run_gpu_bench.sh > $R/rt${rt}_${round}_stdout.txt 2>&1
  done
done
