# device call 4: the committed code (sampler fast path only) vs base_tree = git archive 153f176
export GIT_COMMIT=${GIT_COMMIT:-dirty} PYTHONUNBUFFERED=1; R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpu.txt
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > /dev/null 2>&1 &
timeout 330 python3 -m pytest -q tests/kernels tests/engine/test_cuda_graphs.py tests/engine/test_async_scheduling.py tests/engine/test_sampler.py tests/engine/test_step_shapes.py tests/engine/test_numerics.py > $R/gpu_tests_full.txt 2>&1; echo "tests rc=$?"; tail -3 $R/gpu_tests_full.txt
wait
for t in final base; do d=.; [ $t = base ] && d=base_tree; (cd $d && timeout 100 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag $t --batches 1 --out $R 2>&1 | grep -E "batch  |Error|error" | sed "s/^/$t /" | tee -a $R/engine.log); done
cd $OUT && tar czf r.tgz r
