#!/usr/bin/env bash
# session 27, device call 4: decode_attention_block with thread-0 grid barriers (u64 counter),
# the first KV tile read before the PDL wait and the o slice requested after the attention.
# Priority order (device time nearly spent): batch-1 1B A/B (LLM_DECODE_BLOCK 1 vs 0, one
# round), GPU block tests, phase stamps (scratch dev_block.py), engine numerics + CUDA graphs.
export PYTHONUNBUFFERED=1; R=$OUT; nvidia-smi -L > $R/gpu.txt
cp gpu_call.sh $R/command.sh; cp dev_block.py $R/
OUT=$R/ab_1b timeout 110 bash perf/ab_env_bs1.sh LLM_DECODE_BLOCK 1 0 1 > $R/ab_1b_stdout.txt 2>&1; cat $R/ab_1b/summary.txt
timeout 70 python3 -m pytest -q -x tests/kernels/test_kernels_decode_block.py > $R/pytest_block.log 2>&1; echo "pytest rc $?" >> $R/pytest_block.log; tail -2 $R/pytest_block.log
timeout 50 python3 dev_block.py $R/dev_block.json > $R/dev_block.log 2>&1; tail -2 $R/dev_block.log
timeout 100 python3 -m pytest -q -x tests/engine/test_cuda_graphs.py tests/engine/test_numerics.py > $R/pytest_engine.log 2>&1; echo "pytest rc $?" >> $R/pytest_engine.log; tail -2 $R/pytest_engine.log
