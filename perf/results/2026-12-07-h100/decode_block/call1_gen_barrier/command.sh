#!/usr/bin/env bash
# session 27, device call 1: decode_attention_block (one persistent kernel for the batch-1 attention
# half, grid barriers): registers, GPU tests, batch-1 1B A/B (LLM_DECODE_BLOCK 1 vs 0), interior.
export PYTHONUNBUFFERED=1; R=$OUT/res; mkdir -p $R/interior_on; nvidia-smi -L > $R/gpu.txt
cp gpu_call.sh $R/command.sh
timeout 90 python3 - > $R/compile.txt 2>&1 <<'PY'
import torch, sys
sys.path[:0] = [".", "tests/kernels"]
from kernels import decode_block as db
from test_kernels_decode_block import _inputs
inp = _inputs(385, 2048, 32, 8, 64, torch.bfloat16, True)
out, res = db.decode_attention_block(**inp)
torch.cuda.synchronize()
try:
  caches = db._decode_block_kernel.device_caches[0][0].items()
except Exception as e:
  print("no cache view", e); caches = []
for key, k in caches:
    print("regs", k.n_regs, "spills", k.n_spills, "shared", k.metadata.shared)
PY
cat $R/compile.txt | tail -5
timeout 150 python3 -m pytest -q -x tests/kernels/test_kernels_decode_block.py > $R/pytest_block.log 2>&1; echo "pytest rc $?" >> $R/pytest_block.log; tail -3 $R/pytest_block.log
OUT=$R/ab_1b timeout 240 bash perf/ab_env_bs1.sh LLM_DECODE_BLOCK 1 0 2 > $R/ab_1b_stdout.txt 2>&1; cat $R/ab_1b/summary.txt
timeout 45 python3 perf/diag_step_gaps.py --model-dir /tmp/ab_llama-3.2-1b --out $R/interior_on --interior > $R/interior_on/log.txt 2>&1
grep -m1 "per step" $R/interior_on/log.txt
timeout 150 python3 -m pytest -q -x tests/engine/test_numerics.py tests/engine/test_cuda_graphs.py > $R/pytest_engine.log 2>&1; echo "pytest rc $?" >> $R/pytest_engine.log; tail -3 $R/pytest_engine.log
cd $OUT && tar cJf results.tar.xz res && rm -rf res
