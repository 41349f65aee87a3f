#!/usr/bin/env bash
# scratch (not committed)
set -x
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
R=$OUT/res; mkdir -p $R/p2048 $R/p1536 $R/p1024 $R/p2048b
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/build.log 2>&1
python3 perf/bench_scheduler.py --model-dir /tmp/m1b --skip-prefix --budgets 256 --out $R/p2048 > $R/p2048/log.txt 2>&1
python3 perf/bench_scheduler.py --model-dir /tmp/m1b --skip-prefix --budgets 256 --attention-pairs 393216 --out $R/p1536 > $R/p1536/log.txt 2>&1
python3 perf/bench_scheduler.py --model-dir /tmp/m1b --skip-prefix --budgets 256 --attention-pairs 262144 --out $R/p1024 > $R/p1024/log.txt 2>&1
python3 perf/bench_scheduler.py --model-dir /tmp/m1b --skip-prefix --budgets 256 --out $R/p2048b > $R/p2048b/log.txt 2>&1
tar czf $OUT/res.tgz -C $OUT res
