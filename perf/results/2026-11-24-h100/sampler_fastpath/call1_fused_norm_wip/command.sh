# device call 1: WIP tree (sampler fast path, RMSNorm fused into the qkv/gate_up linear, merge kernel reading every split, V loaded with K as an option); base_tree = git archive 153f176
export GIT_COMMIT=${GIT_COMMIT:-dirty} PYTHONUNBUFFERED=1; R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > /dev/null 2>&1
for i in 1 2; do
  timeout 120 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag new$i --batches 1 --out $R 2>&1 | grep -E "batch|graph_ms|ratio|Error|error" | tee -a $R/engine.log
  (cd base_tree && timeout 120 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag base$i --batches 1 --out $R 2>&1 | grep -E "batch|graph_ms|ratio|Error|error" | tee -a $R/engine.log)
done
timeout 200 python3 -m pytest -q -x tests/kernels/test_kernels_linear.py tests/kernels/test_kernels_attention.py tests/kernels/test_kernels_elementwise.py tests/engine/test_sampler.py 2>&1 | tail -4 > $R/gpu_tests.txt; tail -2 $R/gpu_tests.txt
timeout 150 python3 perf/bench_kernels.py --only decode --sweep decode --out $R > $R/bench_kernels.log 2>&1; echo "bench_kernels rc=$?"; grep -E "decode_B1|decode_B64_C|host time" $R/bench_kernels.log | sort -t: -k2 -n | tail -12
cd $OUT && tar czf r.tgz r
