#!/usr/bin/env bash
# scratch (not committed): wall-time profile of the stub at c128
set -x
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
mkdir -p /tmp/spy && xz -dc .device-bundle/extra/py-spy.xz > /tmp/spy/py-spy && chmod +x /tmp/spy/py-spy
R=$OUT/res; mkdir -p $R
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/build.log 2>&1
python3 -m perf.diag_serving_cpu --model-dir /tmp/m1b --out $R/c128 --duration 10 --delay 3 --window 5 --py-spy /tmp/spy/py-spy > $R/c128.log 2>&1
rm -rf $R/*/server
for f in $R/c128/*.txt; do gzip -9 $f; done
tar czf $OUT/res.tgz -C $OUT res
