#!/usr/bin/env bash
# device calls 8 and 9 (scratch): e2e/ = perf/gpu_e2e_check.py at 5a6a245 (call 8); trace/ = the served path at
# c128 with per-request timestamps (call 9; trace_tree = git archive 5a6a245 + trace_patch.diff, which writes
# adapter.json / stub_loop.json / child.json at shutdown; summarise with python3 trace_summary.py trace/)
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R/trace $R/e2e
timeout 170 python3 perf/gpu_e2e_check.py --out $R/e2e > $R/e2e/log.txt 2>&1     # call 8
A="--shapes 128x512 --concurrency 128 --skip offline,perf_analyzer,hf"
(cd trace_tree && ln -sf ../.device-bundle .device-bundle && GIT_COMMIT=$GIT_COMMIT+trace LLM_TRACE_DIR=$R/trace PYTHONPATH=/tmp/site:$PWD DEADLINE=160 \
  BENCH_ARGS="$A" OUT=$R/traced bash perf/run_gpu_bench.sh > $R/traced_stdout.txt 2>&1)     # call 9
