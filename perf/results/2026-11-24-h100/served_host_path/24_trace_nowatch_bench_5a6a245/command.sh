#!/usr/bin/env bash
# device call 10 (scratch): the trace of 23_ without the cancellation watcher (LLM_CANCEL_POLL_S=1000), then the
# full serving bench at 5a6a245 (response_threads 1)
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R/trace_nowatch
A="--shapes 128x512 --concurrency 128 --skip offline,perf_analyzer,hf"
(cd trace_tree && ln -sf ../.device-bundle .device-bundle && GIT_COMMIT=$GIT_COMMIT+trace LLM_CANCEL_POLL_S=1000 LLM_TRACE_DIR=$R/trace_nowatch PYTHONPATH=/tmp/site:$PWD DEADLINE=150 \
  BENCH_ARGS="$A" OUT=$R/traced_nowatch timeout 170 bash perf/run_gpu_bench.sh > $R/traced_nowatch_stdout.txt 2>&1)
DEADLINE=380 OUT=$R/serving bash perf/run_gpu_bench.sh > $R/serving_stdout.txt 2>&1
