#!/usr/bin/env bash
# session 18, device call 5 (scratch dev_call5.sh): issue 3's figures at 843104b (kernels and engine as 72fcdb0)
export GIT_COMMIT=843104b PYTHONUNBUFFERED=1; R=$OUT/res; mkdir -p $R
{ lscpu; nproc; } > $R/cpu.txt 2>&1
timeout 200 python3 perf/bench_kernels.py --out $R > $R/kernels.log 2>&1
timeout 150 python3 -m tools.random_llama --size llama-3-8b --out /tmp/m8b --dtype bfloat16 --device cuda > $R/m8b.log 2>&1
timeout 120 python3 perf/bench_engine.py --model-dir /tmp/m8b --tag 8b --batches 1 --out $R > $R/engine_8b.log 2>&1
rm -rf /tmp/m8b
timeout 150 python3 perf/bench_engine.py --size llama-3.2-1b --tag 1b --batches 1,32,128 --out $R > $R/engine_1b.log 2>&1
