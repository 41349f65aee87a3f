#!/usr/bin/env bash
# device call 5 (scratch): f3d1818 with the cancellation watcher every 0.1 s (default) vs every 1 s, and 1 s
# without the delivery rests (LLM_DELIVERY_MAX_BUSY=1), twice each
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/build.log 2>&1
python3 perf/bench_offline.py --model-dir /tmp/m1b --shapes 128x512 --concurrency 128,256 --max-model-len 2048 --budget 40 --out $R/offline.json > $R/offline_log.txt 2>&1
A="--shapes 128x512 --concurrency 128,256 --skip offline,perf_analyzer,hf"
for round in 1 2; do
  DEADLINE=140 BENCH_ARGS="$A" OUT=$R/default_$round bash perf/run_gpu_bench.sh > $R/default_${round}_stdout.txt 2>&1
  LLM_CANCEL_POLL_S=1.0 DEADLINE=140 BENCH_ARGS="$A" OUT=$R/poll1_$round bash perf/run_gpu_bench.sh > $R/poll1_${round}_stdout.txt 2>&1
  LLM_DELIVERY_MAX_BUSY=1 LLM_CANCEL_POLL_S=1.0 DEADLINE=140 BENCH_ARGS="$A" OUT=$R/poll1_norest_$round bash perf/run_gpu_bench.sh > $R/poll1_norest_${round}_stdout.txt 2>&1
done
