#!/usr/bin/env bash
# scratch (not committed): served-path CPU diagnostic
set -x
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
mkdir -p /tmp/spy && xz -dc .device-bundle/extra/py-spy.xz > /tmp/spy/py-spy && chmod +x /tmp/spy/py-spy
R=$OUT/res; mkdir -p $R
nproc > $R/nproc.txt; lscpu | head -20 >> $R/nproc.txt
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/build.log 2>&1
python3 perf/bench_offline.py --model-dir /tmp/m1b --shapes 128x512 --concurrency 128 --out $R/offline.json > $R/offline.log 2>&1
python3 -m perf.diag_serving_cpu --model-dir /tmp/m1b --out $R/c128 --py-spy /tmp/spy/py-spy > $R/c128.log 2>&1
LLM_DELIVERY_MAX_BUSY=1 python3 -m perf.diag_serving_cpu --model-dir /tmp/m1b --out $R/c128_norest > $R/c128_norest.log 2>&1
rm -rf $R/*/server/model_repository
tar czf $OUT/res.tgz -C $OUT res
