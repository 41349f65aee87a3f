#!/usr/bin/env bash
# session 19 call 8: RoPE reads before the wait only for <= 256 tokens (working tree) vs e6f2ba1 (head_tree)
export PYTHONUNBUFFERED=1; R=$OUT/res; mkdir -p $R
nvidia-smi -L > $R/gpu.txt
timeout 100 python3 -m pytest -q tests/kernels/test_kernels_elementwise.py > $R/test_elementwise.txt 2>&1
echo "test rc $?" >> $R/times.txt
for i in 1 2; do
  (cd head_tree && GIT_COMMIT=e6f2ba1 timeout 60 python3 perf/bench_kernels.py --only elementwise --out $R/head_$i > $R/head_$i.log 2>&1)
  GIT_COMMIT=wip timeout 60 python3 perf/bench_kernels.py --only elementwise --out $R/new_$i > $R/new_$i.log 2>&1
done
timeout 120 python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/m1b.log 2>&1
for i in 1 2; do
  (cd head_tree && GIT_COMMIT=e6f2ba1 timeout 60 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag head_$i --batches 1 --out $R > $R/engine_head_$i.log 2>&1)
  GIT_COMMIT=wip timeout 60 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag new_$i --batches 1 --out $R > $R/engine_new_$i.log 2>&1
done
tar czf $OUT/res.tgz -C $OUT res
