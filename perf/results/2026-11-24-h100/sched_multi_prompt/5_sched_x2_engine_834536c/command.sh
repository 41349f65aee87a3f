#!/usr/bin/env bash
# scratch (not committed)
set -x
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
R=$OUT/res; mkdir -p $R/run1 $R/run2 $R/engine
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/build.log 2>&1
for i in 1 2; do python3 perf/bench_scheduler.py --model-dir /tmp/m1b --out $R/run$i > $R/run$i/log.txt 2>&1; done
python3 perf/bench_engine.py --model-dir /tmp/m1b --batches 1,128 --out $R/engine > $R/engine/log.txt 2>&1
tar czf $OUT/res.tgz -C $OUT res
