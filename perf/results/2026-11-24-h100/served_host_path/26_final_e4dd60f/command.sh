#!/usr/bin/env bash
# device call 12 (scratch): the full serving bench at e4dd60f (response_threads 4 by default), a fresh machine
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R
DEADLINE=380 OUT=$R/serving bash perf/run_gpu_bench.sh > $R/serving_stdout.txt 2>&1
