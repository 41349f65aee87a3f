#!/usr/bin/env bash
# scratch (not committed): the full serving bench and the GPU end-to-end check at the last commit
set -x
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R/e2e
timeout 150 python3 perf/gpu_e2e_check.py --out $R/e2e > $R/e2e/log.txt 2>&1
DEADLINE=400 OUT=$R/serving bash perf/run_gpu_bench.sh > $R/serving_stdout.txt 2>&1
rm -rf $R/serving/perf_analyzer/*_export.json $R/serving/perf_analyzer/inputs_*.json $R/*/server $R/*/repo
tar czf $OUT/res.tgz -C $OUT res
