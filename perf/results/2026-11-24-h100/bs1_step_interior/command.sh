#!/usr/bin/env bash
# session 18, device call 1: the batch-1 decode step's kernels inside its CUDA graph, at 72fcdb0 + the
# --interior option of perf/diag_step_gaps.py (committed with these results)
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > /dev/null 2>&1
timeout 120 python3 perf/diag_step_gaps.py --model-dir /tmp/m1b --out $OUT/res/interior --interior > $OUT/res/interior/log.txt 2>&1
