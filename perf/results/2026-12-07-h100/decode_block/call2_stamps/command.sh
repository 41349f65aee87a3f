#!/usr/bin/env bash
# session 27, device call 2: decode_attention_block phase timings (globaltimer stamps, scratch
# dev_block.py) for barrier / preload variants vs the unfused ops; then the engine A/B of the
# tree (signal the next kernel at the end) with one round, and GPU block tests.
export PYTHONUNBUFFERED=1; R=$OUT/res; mkdir -p $R; nvidia-smi -L > $R/gpu.txt
cp gpu_call.sh $R/command.sh; cp dev_block.py $R/
timeout 200 python3 dev_block.py $R/dev_block.json > $R/dev_block.log 2>&1; tail -8 $R/dev_block.log
timeout 100 python3 -m pytest -q -x tests/kernels/test_kernels_decode_block.py > $R/pytest_block.log 2>&1; echo "pytest rc $?" >> $R/pytest_block.log; tail -2 $R/pytest_block.log
OUT=$R/ab_1b timeout 150 bash perf/ab_env_bs1.sh LLM_DECODE_BLOCK 1 0 1 > $R/ab_1b_stdout.txt 2>&1; cat $R/ab_1b/summary.txt
cd $OUT && tar cJf results.tar.xz res && rm -rf res
