#!/usr/bin/env bash
# device call 2 (scratch): offline engine, then served f3d1818 (admission thread + final-send lock) vs base
# 81cbe77 + the same lock (base_tree = git archive 81cbe77, patched with f3d1818's model.py hunks that apply),
# both shapes, c128 and c256, in the order new, base, new2, base2.
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/build.log 2>&1
python3 perf/bench_offline.py --model-dir /tmp/m1b --shapes 128x512,1024x128 --concurrency 128,256 --max-model-len 2048 --budget 120 --out $R/offline.json > $R/offline_log.txt 2>&1
A="--shapes 128x512,1024x128 --concurrency 128,256 --skip offline,perf_analyzer,hf"
DEADLINE=150 BENCH_ARGS="$A" OUT=$R/new bash perf/run_gpu_bench.sh > $R/new_stdout.txt 2>&1
(cd base_tree && ln -sf ../.device-bundle .device-bundle && GIT_COMMIT=81cbe77+lockfix PYTHONPATH=/tmp/site:$PWD DEADLINE=150 \
  BENCH_ARGS="$A" OUT=$R/base bash perf/run_gpu_bench.sh > $R/base_stdout.txt 2>&1)
DEADLINE=150 BENCH_ARGS="$A" OUT=$R/new2 bash perf/run_gpu_bench.sh > $R/new2_stdout.txt 2>&1
(cd base_tree && GIT_COMMIT=81cbe77+lockfix PYTHONPATH=/tmp/site:$PWD DEADLINE=150 \
  BENCH_ARGS="$A" OUT=$R/base2 bash perf/run_gpu_bench.sh > $R/base2_stdout.txt 2>&1)
