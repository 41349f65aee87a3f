export GIT_COMMIT=${GIT_COMMIT:-dirty} PYTHONUNBUFFERED=1; R=$OUT/r; mkdir -p $R
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > /dev/null 2>&1 &
python3 -m pytest -q tests/kernels/test_kernels_linear.py 2>&1 | tail -3 > $R/gpu_tests.txt; tail -1 $R/gpu_tests.txt
timeout 300 python3 perf/bench_small_linear.py --quick --sizes 1b --out $R 2>&1 | grep -v OutOfRes | tee $R/small_linear.log
wait
for mode in "LLM_LINEAR_CONFIGS=$R/small_linear.json" "LLM_PDL=1" "LLM_PDL=0 LLM_SMALL_LINEAR=0"; do
  tag=$(echo $mode | sed 's|=.*/|=|' | tr -d ' =_./' | tr 'A-Z' 'a-z')
  env $mode timeout 150 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag $tag --batches 1 --out $R 2>&1 | grep -E "batch|graph_ms|ratio" | tee -a $R/engine.log
done
