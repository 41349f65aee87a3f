#!/usr/bin/env bash
# The batch-1 fusions, off by default (stop 29 measured them slower alone; see
# perf/results/2026-12-07-h100/batch1_fusions/), in one device call (GPU):
#   LLM_FUSED_DECODE_ATTENTION=1   RoPE + K/V write + split merge inside the decode attention launch
#   LLM_NORM_LINEAR=1              the norms inside the qkv and gate_up kernels (one row)
#   LLM_ONE_ROW_SIGNAL=product     the one-row linear's PDL signal after its product, not at its
#                                  wait: 80 registers a thread for sm_90, not 156 (stop 29: 2%
#                                  slower at batch 1 on an H100)
#   LLM_ONE_ROW_CONFIG             the one-row linear's launch shape
#   LLM_SHORT_DECODE_CONTEXT=1024  decode graphs without KV splits (no merge kernel) for <= 16
#                                  sequences at contexts up to 1024 (engine/step_shapes.py)
#
#   OUT=DIR bash perf/ab_fusions_bs1.sh
#
# 1. GPU tests of the new paths; 2. batch-1 1B A/B of the settings, alternating, two rounds
# (perf/ab_configs_bs1.py); 3. the kernel bench's decode group (one launch vs the kernels it
# replaces, B=1 and B=64 x 4096); 4. the step interior with everything on. Results in $OUT.
set -u
OUT=${OUT:-perf/results/ab_fusions}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
M=${MODEL_DIR:-/tmp/ab_llama-3.2-1b}
nvidia-smi -L > "$OUT/gpu.txt"
[ -f "$M/config.json" ] || python3 -m tools.random_llama --size llama-3.2-1b --out "$M" --dtype bfloat16 \
    --device cuda > "$OUT/model.log" 2>&1
timeout 150 python3 -m pytest -q -x tests/kernels/test_kernels_rope_attention.py tests/kernels/test_kernels_linear.py \
    tests/kernels/test_kernels_attention.py > "$OUT/pytest_kernels.log" 2>&1; tail -1 "$OUT/pytest_kernels.log"
ALL="LLM_FUSED_DECODE_ATTENTION=1 LLM_NORM_LINEAR=1"
P="LLM_ONE_ROW_SIGNAL=product"
# Stop 29 measured base, product, norm and attention (batch1_fusions/); not yet: RoPE alone, and
# the norm fusion with RoPE beside the product signal (its best setting, +0.5% over base).
timeout 300 python3 perf/ab_configs_bs1.py --model-dir "$M" --out "$OUT/ab.json" --rounds 2 \
    --config "name=base" \
    --config "name=short_decode LLM_SHORT_DECODE_CONTEXT=1024" \
    --config "name=rope_only LLM_FUSED_DECODE_ATTENTION=rope" \
    --config "name=product_norm $P LLM_NORM_LINEAR=1" \
    --config "name=product_norm_rope $P LLM_NORM_LINEAR=1 LLM_FUSED_DECODE_ATTENTION=rope" \
    --config "name=product_all $P $ALL" 2>&1 | tee "$OUT/ab.log"
LLM_FUSED_DECODE_ATTENTION=1 timeout 150 python3 perf/bench_kernels.py --only decode --out "$OUT/kernels" \
    > "$OUT/kernels.log" 2>&1; grep -E "rope|decode_B" "$OUT/kernels.log" | head -20
env $ALL timeout 90 python3 perf/diag_step_gaps.py --model-dir "$M" --interior --out "$OUT/interior" \
    > "$OUT/interior.log" 2>&1; grep -A8 "per step" "$OUT/interior.log"
timeout 150 env $ALL python3 -m pytest -q -x tests/engine/test_cuda_graphs.py tests/engine/test_numerics.py \
    > "$OUT/pytest_engine.log" 2>&1; tail -1 "$OUT/pytest_engine.log"
