#!/usr/bin/env bash
# session 19 call 2: per-kernel PDL signal (rope/attention/merge at start) + n128 split decode
export PYTHONUNBUFFERED=1; R=$OUT/res; mkdir -p $R
nvidia-smi -L > $R/gpu.txt; { lscpu; nproc; } > $R/cpu.txt 2>&1
T0=$SECONDS
timeout 120 python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/m1b.log 2>&1
for i in 1 2; do
  (cd base_tree && GIT_COMMIT=c0dffb0 timeout 90 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag base_$i --batches 1 --out $R > $R/engine_base_$i.log 2>&1)
  GIT_COMMIT=wip timeout 90 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag new_$i --batches 1 --out $R > $R/engine_new_$i.log 2>&1
  GIT_COMMIT=wip LLM_PDL=1 timeout 90 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag pdl1_$i --batches 1 --out $R > $R/engine_pdl1_$i.log 2>&1
  echo "engine round $i done at $((SECONDS-T0)) s" >> $R/times.txt
done
GIT_COMMIT=wip timeout 80 python3 perf/bench_kernels.py --only decode --out $R/kern_new > $R/kern_new.log 2>&1
GIT_COMMIT=wip LLM_PDL=1 timeout 80 python3 perf/bench_kernels.py --only decode --out $R/kern_pdl1 > $R/kern_pdl1.log 2>&1
echo "benches done at $((SECONDS-T0)) s" >> $R/times.txt
timeout $((570-SECONDS+T0)) python3 -m pytest -q -x tests/kernels/test_kernels_attention.py tests/kernels/test_kernels_elementwise.py tests/engine/test_cuda_graphs.py tests/engine/test_numerics.py > $R/gputests.txt 2>&1
echo "tests rc $? at $((SECONDS-T0)) s" >> $R/times.txt
tar czf $OUT/res.tgz -C $OUT res
