#!/usr/bin/env bash
# stop 21 call 5: batch-1 1B engine at HEAD vs 54faca0 (var_old/: engine, kernels, tools, bench of that
# commit) side by side, alternating, after call 4 measured 781 tok/s at HEAD (854 at 35b17b2 in call 1)
export PYTHONUNBUFFERED=1; R=$OUT/res; mkdir -p $R; nvidia-smi -L > $R/gpu.txt; T0=$SECONDS
timeout 60 python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/m1b.log 2>&1
for i in 1 2; do
  GIT_COMMIT=HEAD timeout 80 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag head_$i --batches 1 --out $R > $R/head_$i.log 2>&1
  (cd var_old && GIT_COMMIT=54faca0 timeout 80 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag old_$i --batches 1 --out $R > $R/old_$i.log 2>&1)
  echo "round $i at $((SECONDS-T0)) s" >> $R/times.txt
done
tar czf $OUT/res.tgz -C $OUT res
