#!/usr/bin/env bash
# scratch (not committed): served path A/B (base 33c11b2 vs working tree) + CPU diagnostic
set -x
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
mkdir -p /tmp/spy && xz -dc .device-bundle/extra/py-spy.xz > /tmp/spy/py-spy && chmod +x /tmp/spy/py-spy
R=$OUT/res; mkdir -p $R
# new tree: the full serving bench
DEADLINE=330 OUT=$R/serving bash perf/run_gpu_bench.sh > $R/serving_stdout.txt 2>&1
# base tree: the same, 128x512 only, no perf_analyzer / HF
(cd base_tree && ln -s ../.device-bundle .device-bundle && GIT_COMMIT=33c11b2 PYTHONPATH=/tmp/site:$PWD DEADLINE=170 \
  BENCH_ARGS="--skip perf_analyzer,hf --shapes 128x512" OUT=$R/base_serving bash perf/run_gpu_bench.sh > $R/base_serving_stdout.txt 2>&1)
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/build.log 2>&1
python3 -m perf.diag_serving_cpu --model-dir /tmp/m1b --out $R/diag_c128 --py-spy /tmp/spy/py-spy > $R/diag_c128.log 2>&1
rm -rf $R/*/server $R/serving/*_export.json $R/base_serving/*_export.json
find $R -name "model_repository" -prune -exec rm -rf {} \;
tar czf $OUT/res.tgz -C $OUT res
