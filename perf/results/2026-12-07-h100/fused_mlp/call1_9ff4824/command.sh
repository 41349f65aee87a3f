#!/usr/bin/env bash
# session 30, device call 1 (scratch): the fused MLP (kernels/mlp.py): its GPU tests, the MLP
# chain sweep (perf/bench_fused_mlp.py), and batch-1 1B engine A/B with the best HF-layout config.
export PYTHONUNBUFFERED=1 GIT_COMMIT=${GIT_COMMIT:-wip}; R=$OUT; nvidia-smi -L > $R/gpu.txt; cat $R/gpu.txt; cp gpu_call.sh $R/command.sh
M=/tmp/ab_llama-3.2-1b
python3 -m tools.random_llama --size llama-3.2-1b --out $M --dtype bfloat16 --device cuda > $R/model.log 2>&1 &
timeout 100 python3 -m pytest -q tests/kernels/test_kernels_mlp.py > $R/pytest_mlp.log 2>&1; tail -1 $R/pytest_mlp.log; grep -E "^E  |FAILED" $R/pytest_mlp.log | head -6
wait
timeout 260 python3 perf/bench_fused_mlp.py --out $R --deadline 170 2>&1 | tee $R/mlp.log | grep -v "^  " 
grep "^  " $R/mlp.log | sort -n | head -8
CFG=$(grep -o "best_hf_config=[0-9,]*" $R/mlp.log | cut -d= -f2); CFG=${CFG:-32,128,256,4,3}; echo "engine A/B with $CFG"
timeout 120 python3 perf/ab_configs_bs1.py --model-dir $M --out $R/ab.json --rounds 2 --timeout 50 \
    --config "name=base" --config "name=fused_mlp LLM_FUSED_MLP=1 LLM_MLP_CONFIG=$CFG" 2>&1 | tee $R/ab.log
