#!/usr/bin/env bash
# session 30, device call 2 (scratch): the MLP's two kernels with L2 prefetch / late signal, the
# fused MLP with a one-load reduce and down prefetch; engine A/B of the best of each.
export PYTHONUNBUFFERED=1 GIT_COMMIT=${GIT_COMMIT:-wip}; R=$OUT; nvidia-smi -L > $R/gpu.txt; cat $R/gpu.txt; cp gpu_call.sh $R/command.sh
M=/tmp/ab_llama-3.2-1b
python3 -m tools.random_llama --size llama-3.2-1b --out $M --dtype bfloat16 --device cuda > $R/model.log 2>&1 &
timeout 240 python3 perf/bench_fused_mlp.py --out $R --deadline 30 2>&1 | tee $R/mlp.log | grep -v "^  " 
grep "^  " $R/mlp.log | head -40
CFG=$(grep -o "best_hf_config=[0-9,]*" $R/mlp.log | cut -d= -f2); CFG=${CFG:-64,128,128,4,4,16,1}
BEST=$(grep -o "best_two_kernels=[a-z_0-9]*" $R/mlp.log | cut -d= -f2); ENV=""
[[ $BEST =~ down_prefetch([0-9]+) ]] && ENV="LLM_DOWN_PREFETCH_TILES=${BASH_REMATCH[1]}"
[[ $BEST =~ gu_prefetch([0-9]+) ]] && ENV="$ENV LLM_GATE_UP_PREFETCH_TILES=${BASH_REMATCH[1]}"
[[ $BEST == *late* ]] && ENV="$ENV LLM_GATE_UP_LATE_SIGNAL=1"; [[ $BEST == *evict_first* ]] && ENV="$ENV LLM_GATE_UP_EVICT_FIRST=1"
echo "engine A/B: fused $CFG; two kernels $BEST: $ENV"
wait
TWO=(); [ -n "$ENV" ] && TWO=(--config "name=$BEST $ENV")
timeout 200 python3 perf/ab_configs_bs1.py --model-dir $M --out $R/ab.json --rounds 2 --timeout 50 \
    --config "name=base" "${TWO[@]}" --config "name=fused_mlp LLM_FUSED_MLP=1 LLM_MLP_CONFIG=$CFG" 2>&1 | tee $R/ab.log
timeout 40 python3 -m pytest -q tests/kernels/test_kernels_mlp.py -k gpu > $R/pytest.log 2>&1; tail -1 $R/pytest.log; grep -E "^E  |FAILED" $R/pytest.log | head -6
