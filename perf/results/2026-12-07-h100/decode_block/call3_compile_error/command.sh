#!/usr/bin/env bash
# session 27, device call 3: decode_attention_block with thread-0 barriers, the first KV tile read
# before the PDL wait and the o slice requested after the attention: phase stamps (scratch
# dev_block.py), GPU tests, batch-1 1B A/B (LLM_DECODE_BLOCK 1 vs 0, 2 rounds), interior.
export PYTHONUNBUFFERED=1; R=$OUT/res; mkdir -p $R/interior_on; nvidia-smi -L > $R/gpu.txt
cp gpu_call.sh $R/command.sh; cp dev_block.py $R/
timeout 120 python3 dev_block.py $R/dev_block.json > $R/dev_block.log 2>&1; tail -3 $R/dev_block.log
timeout 100 python3 -m pytest -q -x tests/kernels/test_kernels_decode_block.py > $R/pytest_block.log 2>&1; echo "pytest rc $?" >> $R/pytest_block.log; tail -2 $R/pytest_block.log
OUT=$R/ab_1b timeout 220 bash perf/ab_env_bs1.sh LLM_DECODE_BLOCK 1 0 2 > $R/ab_1b_stdout.txt 2>&1; cat $R/ab_1b/summary.txt
timeout 45 python3 perf/diag_step_gaps.py --model-dir /tmp/ab_llama-3.2-1b --out $R/interior_on --interior > $R/interior_on/log.txt 2>&1
grep -m1 "per step" $R/interior_on/log.txt
timeout 130 python3 -m pytest -q -x tests/engine/test_numerics.py tests/engine/test_cuda_graphs.py > $R/pytest_engine.log 2>&1; echo "pytest rc $?" >> $R/pytest_engine.log; tail -2 $R/pytest_engine.log
cd $OUT && tar cJf results.tar.xz res && rm -rf res
