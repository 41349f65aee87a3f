#!/usr/bin/env bash
# stop 21 call 3: batch-1 1B decode at short contexts (prompt 128, 256 new tokens: contexts 128-384) with
# the decode graph's KV splits chosen for max_model_len 4096 (committed: 32 splits) vs fewer splits
# (MIN_TOKENS_PER_SPLIT patched: 1024 -> 4 splits, 2048 -> 2, 4096 -> unsplit)
export PYTHONUNBUFFERED=1 GIT_COMMIT=54faca0; R=$OUT/res; mkdir -p $R
nvidia-smi -L > $R/gpu.txt; T0=$SECONDS
timeout 90 python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/m1b.log 2>&1
i=0
for min in 128 4096 1024 2048 128; do
  i=$((i+1))
  sed -i "s/^MIN_TOKENS_PER_SPLIT = [0-9]*/MIN_TOKENS_PER_SPLIT = $min/" kernels/heuristics.py
  grep -n "^MIN_TOKENS_PER_SPLIT" kernels/heuristics.py >> $R/times.txt
  timeout 100 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag 1b_min${min}_$i --batches 1 --out $R > $R/engine_min${min}_$i.log 2>&1
  echo "min $min rc $? at $((SECONDS-T0)) s" >> $R/times.txt
done
git checkout kernels/heuristics.py
tar czf $OUT/res.tgz -C $OUT res
