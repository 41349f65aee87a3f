#!/usr/bin/env bash
# session 28, device call 1: L2 prefetch side stream, batch-1 1B sweep (scratch dev_prefetch.py)
export PYTHONUNBUFFERED=1; R=$OUT; nvidia-smi -L > $R/gpu.txt; cat $R/gpu.txt
cp gpu_call.sh $R/command.sh; cp dev_prefetch.py $R/
M=/tmp/ab_llama-3.2-1b
python3 -m tools.random_llama --size llama-3.2-1b --out $M --dtype bfloat16 --device cuda > $R/model.log 2>&1 || tail -5 $R/model.log
timeout 420 python3 dev_prefetch.py $M $R/prefetch_sweep.json 2>&1 | tee $R/sweep.log
