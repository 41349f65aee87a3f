#!/usr/bin/env bash
# device call 1 (scratch, not committed): offline engine, then served 8788fd4 (admission thread) vs base 81cbe77
# (base_tree = git archive 81cbe77); 128 in / 512 out, c128 and c256. The base server died at the end of c128
# (SIGSEGV in TRITONBACKEND_ResponseFactoryIsCancelled: base/tritonserver_log.txt), fixed in f3d1818.
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/build.log 2>&1
python3 perf/bench_offline.py --model-dir /tmp/m1b --shapes 128x512 --concurrency 128,256 --max-model-len 2048 --budget 90 --out $R/offline.json > $R/offline_log.txt 2>&1
A="--shapes 128x512 --concurrency 128,256 --skip offline,perf_analyzer,hf"
DEADLINE=160 BENCH_ARGS="$A" OUT=$R/new bash perf/run_gpu_bench.sh > $R/new_stdout.txt 2>&1
(cd base_tree && ln -sf ../.device-bundle .device-bundle && GIT_COMMIT=81cbe77 PYTHONPATH=/tmp/site:$PWD DEADLINE=160 \
  BENCH_ARGS="$A" OUT=$R/base bash perf/run_gpu_bench.sh > $R/base_stdout.txt 2>&1)
