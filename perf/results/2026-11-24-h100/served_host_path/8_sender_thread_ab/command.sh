#!/usr/bin/env bash
# scratch (not committed): A/B of the sender thread (HEAD~1 vs HEAD) on one machine + GPU e2e check
set -x
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R/e2e
for round in 1; do
DEADLINE=170 BENCH_ARGS="--skip perf_analyzer,hf --shapes 128x512 --concurrency 1,128,256" OUT=$R/new_$round bash perf/run_gpu_bench.sh > $R/new_${round}_stdout.txt 2>&1
(cd base_tree && ln -sf ../.device-bundle .device-bundle && GIT_COMMIT=b85c355 PYTHONPATH=/tmp/site:$PWD DEADLINE=170 \
  BENCH_ARGS="--skip perf_analyzer,hf --shapes 128x512 --concurrency 1,128,256" OUT=$R/base_$round bash perf/run_gpu_bench.sh > $R/base_${round}_stdout.txt 2>&1)
done
python3 perf/gpu_e2e_check.py --out $R/e2e > $R/e2e/log.txt 2>&1
tar czf $OUT/res.tgz -C $OUT res
