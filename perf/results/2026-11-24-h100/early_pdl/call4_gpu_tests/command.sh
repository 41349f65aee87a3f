#!/usr/bin/env bash
# session 19 call 4: GPU tests at the committed code, and the new write->attention test on a planted bug
export PYTHONUNBUFFERED=1; R=$OUT/res; mkdir -p $R
nvidia-smi -L > $R/gpu.txt; { lscpu; nproc; } > $R/cpu.txt 2>&1
T0=$SECONDS
(cd var_bug && timeout 100 python3 -m pytest -q tests/kernels/test_kernels_attention.py -k after_the_cache > $R/test_planted_bug.txt 2>&1)
echo "planted-bug test rc $? (must be 1) at $((SECONDS-T0)) s" >> $R/times.txt
timeout $((560-SECONDS+T0)) python3 -m pytest -q tests/kernels tests/engine/test_cuda_graphs.py tests/engine/test_numerics.py tests/engine/test_async_scheduling.py tests/engine/test_step_shapes.py > $R/gputests.txt 2>&1
echo "tests rc $? at $((SECONDS-T0)) s" >> $R/times.txt
tar czf $OUT/res.tgz -C $OUT res
