#!/usr/bin/env bash
# scratch (not committed): where does the c128 TTFT go? Triton queue/execute times, stub rests on/off
set -x
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/build.log 2>&1
python3 -m perf.diag_serving_cpu --model-dir /tmp/m1b --out $R/c128 --duration 10 --delay 3 --window 4 > $R/c128.log 2>&1
LLM_DELIVERY_MAX_BUSY=1 python3 -m perf.diag_serving_cpu --model-dir /tmp/m1b --out $R/c128_norest --duration 10 --delay 3 --window 4 > $R/c128_norest.log 2>&1
rm -rf $R/*/server
tar czf $OUT/res.tgz -C $OUT res
