#!/usr/bin/env bash
# device call 14 (scratch, not committed): delivery order in each round (finals first, then first tokens; f686391,
# `new_*`) vs d82902a (`base_*`, base_tree = git archive d82902a), two runs each, one machine
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/build.log 2>&1
python3 perf/bench_offline.py --model-dir /tmp/m1b --shapes 128x512 --concurrency 128,256 --max-model-len 2048 --budget 40 --out $R/offline.json > $R/offline_log.txt 2>&1
A="--shapes 128x512 --concurrency 128,256 --skip offline,perf_analyzer,hf"
for round in 1 2; do
  DEADLINE=140 BENCH_ARGS="$A" OUT=$R/new_$round timeout 180 bash perf/run_gpu_bench.sh > $R/new_${round}_stdout.txt 2>&1
  (cd base_tree && ln -sf ../.device-bundle .device-bundle && GIT_COMMIT=d82902a PYTHONPATH=/tmp/site:$PWD DEADLINE=140 \
    BENCH_ARGS="$A" OUT=$R/base_$round timeout 180 bash perf/run_gpu_bench.sh > $R/base_${round}_stdout.txt 2>&1)
done
