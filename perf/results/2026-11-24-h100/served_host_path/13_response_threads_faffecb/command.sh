#!/usr/bin/env bash
# scratch (not committed): response_threads 1/2/4/8 side by side on one machine, then a diag at 4
set -x
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R
A="--skip perf_analyzer,hf --shapes 128x512 --concurrency 128,256"
DEADLINE=150 BENCH_ARGS="$A --server-param response_threads=4" OUT=$R/rt4 bash perf/run_gpu_bench.sh > $R/rt4_stdout.txt 2>&1
for n in 1 2 8; do
  DEADLINE=120 BENCH_ARGS="$A --skip offline,perf_analyzer,hf --server-param response_threads=$n" OUT=$R/rt$n bash perf/run_gpu_bench.sh > $R/rt${n}_stdout.txt 2>&1
done
DEADLINE=120 BENCH_ARGS="$A --skip offline,perf_analyzer,hf --server-param response_threads=4" OUT=$R/rt4_again bash perf/run_gpu_bench.sh > $R/rt4_again_stdout.txt 2>&1
mkdir -p /tmp/spy && xz -dc .device-bundle/extra/py-spy.xz > /tmp/spy/py-spy && chmod +x /tmp/spy/py-spy
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/build.log 2>&1
timeout 100 python3 -m perf.diag_serving_cpu --model-dir /tmp/m1b --out $R/diag_c128_rt4 --duration 10 --delay 3 --window 5 --py-spy /tmp/spy/py-spy > $R/diag_c128_rt4.log 2>&1
rm -rf $R/*/server $R/*/repo
for f in $R/diag_c128_rt4/*.txt; do gzip -9 $f; done
find $R -name '*_export.json' -delete; find $R -name 'inputs_*.json' -delete
tar czf $OUT/res.tgz -C $OUT res
