#!/usr/bin/env bash
# scratch (not committed): serving bench at the last commit
set -x
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R
DEADLINE=420 OUT=$R/serving bash perf/run_gpu_bench.sh > $R/serving_stdout.txt 2>&1
rm -rf $R/serving/perf_analyzer/*_export.json $R/serving/perf_analyzer/inputs_*.json
tar czf $OUT/res.tgz -C $OUT res
