#!/usr/bin/env bash
# scratch (not committed): final serving + scheduler benchmarks at the last commit
set -x
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R/sched
DEADLINE=420 OUT=$R/serving bash perf/run_gpu_bench.sh > $R/serving_stdout.txt 2>&1
python3 perf/bench_scheduler.py --out $R/sched > $R/sched/log.txt 2>&1
rm -rf $R/serving/perf_analyzer/*_export.json $R/serving/perf_analyzer/inputs_*.json
tar czf $OUT/res.tgz -C $OUT res
