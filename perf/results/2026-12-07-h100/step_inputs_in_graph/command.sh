#!/usr/bin/env bash
# session 28, device call 3: the step's inputs made ready inside its graph (prepare_step_inputs)
# and the graph's greedy results written straight to pinned host memory, vs HEAD (base_tree/):
# GPU tests, batch-1 1B A/B (scratch dev_ab.py), the step interior of the new tree.
export PYTHONUNBUFFERED=1; R=$OUT; nvidia-smi -L > $R/gpu.txt; cat $R/gpu.txt
cp gpu_call.sh $R/command.sh; cp dev_ab.py $R/
M=/tmp/ab_llama-3.2-1b
[ -f $M/config.json ] || python3 -m tools.random_llama --size llama-3.2-1b --out $M --dtype bfloat16 --device cuda > $R/model.log 2>&1
timeout 100 python3 -m pytest -q -x tests/kernels/test_kernels_step_inputs.py tests/kernels/test_kernels_elementwise.py -k "argmax or step_inputs" > $R/pytest_kernels.log 2>&1; tail -1 $R/pytest_kernels.log
timeout 240 python3 dev_ab.py $M $R/ab.json '[["new",".",{}],["base","base_tree",{}],["new",".",{}],["base","base_tree",{}]]' 2>&1 | tee $R/ab.log
timeout 100 python3 perf/diag_step_gaps.py --model-dir $M --interior --out $R/interior_new > $R/interior_new.log 2>&1; grep -A14 "per step" $R/interior_new.log | head -30
timeout 200 python3 -m pytest -q -x tests/engine/test_cuda_graphs.py tests/engine/test_async_scheduling.py tests/engine/test_sampler.py > $R/pytest_engine.log 2>&1; tail -1 $R/pytest_engine.log
