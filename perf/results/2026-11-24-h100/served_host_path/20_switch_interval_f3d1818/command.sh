#!/usr/bin/env bash
# device call 4 (scratch): the stub's sys.setswitchinterval 0.5 ms (f3d1818, si5) vs 0.1 ms (si1) vs 0.05 ms (si05),
# si1_tree/si05_tree = git archive f3d1818 with the value changed by sed in model_repository/llm/1/model.py.
# (Call 3 ran the same with DEADLINE=100: every point was skipped for lack of time.)
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/build.log 2>&1
python3 perf/bench_offline.py --model-dir /tmp/m1b --shapes 128x512 --concurrency 128,256 --max-model-len 2048 --budget 40 --out $R/offline.json > $R/offline_log.txt 2>&1
A="--shapes 128x512 --concurrency 128,256 --skip offline,perf_analyzer,hf"
for round in 1 2; do
  DEADLINE=140 BENCH_ARGS="$A" OUT=$R/si5_$round bash perf/run_gpu_bench.sh > $R/si5_${round}_stdout.txt 2>&1
  for v in si1 si05; do
    (cd ${v}_tree && ln -sf ../.device-bundle .device-bundle && GIT_COMMIT=$GIT_COMMIT+$v PYTHONPATH=/tmp/site:$PWD DEADLINE=140 \
      BENCH_ARGS="$A" OUT=$R/${v}_$round bash perf/run_gpu_bench.sh > $R/${v}_${round}_stdout.txt 2>&1)
  done
done
