#!/usr/bin/env bash
# session 19 call 6: prefill attention A/B: c0dffb0 (base_tree) vs e6f2ba1 vs e6f2ba1 LLM_PDL=1 vs var_F
# (the attention signals at its start only on the split decode grid)
export PYTHONUNBUFFERED=1; R=$OUT/res; mkdir -p $R
nvidia-smi -L > $R/gpu.txt; { lscpu; nproc; } > $R/cpu.txt 2>&1
for i in 1 2; do
  (cd base_tree && GIT_COMMIT=c0dffb0 timeout 60 python3 perf/bench_kernels.py --only prefill,decode --out $R/base_$i > $R/base_$i.log 2>&1)
  GIT_COMMIT=e6f2ba1 timeout 60 python3 perf/bench_kernels.py --only prefill,decode --out $R/head_$i > $R/head_$i.log 2>&1
  GIT_COMMIT=e6f2ba1 LLM_PDL=1 timeout 60 python3 perf/bench_kernels.py --only prefill,decode --out $R/pdl1_$i > $R/pdl1_$i.log 2>&1
  (cd var_F && GIT_COMMIT=e6f2ba1+var_F timeout 60 python3 perf/bench_kernels.py --only prefill,decode --out $R/varF_$i > $R/varF_$i.log 2>&1)
done
tar czf $OUT/res.tgz -C $OUT res
