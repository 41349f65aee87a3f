#!/usr/bin/env bash
# device call 6 (scratch): the offline engine at c128/c256 (each twice) with the requests arriving at once vs
# evenly over 30 / 60 / 120 ms (perf/bench_offline.py --arrival-spread-ms, 5a6a245)
R=$OUT/res; mkdir -p $R
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/build.log 2>&1
for s in 0 30 60 120; do
  python3 perf/bench_offline.py --model-dir /tmp/m1b --shapes 128x512 --concurrency 128,256,128,256 --max-model-len 2048 --budget 60 \
    --arrival-spread-ms $s --no-copy-bandwidth --out $R/offline_spread$s.json > $R/offline_spread${s}_log.txt 2>&1
done
