#!/usr/bin/env bash
# session 19 call 9: where the batch-1 step's host time goes (cProfile; sync vs async) at 62c539a
export PYTHONUNBUFFERED=1 GIT_COMMIT=62c539a; R=$OUT/res; mkdir -p $R
nvidia-smi -L > $R/gpu.txt
timeout 120 python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/m1b.log 2>&1
timeout 120 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag 1b --batches 1 --profile --sync-too --out $R > $R/engine.log 2>&1
timeout 60 python3 perf/diag_step_gaps.py --model-dir /tmp/m1b --out $R/interior --interior > $R/interior.log 2>&1
tar czf $OUT/res.tgz -C $OUT res
