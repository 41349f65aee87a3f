# device call 1 (sched_profile/), code = daedd39's kernels/attention.py on 32a91a1:
python3 -m pytest -q tests/kernels/test_kernels_attention.py tests/engine/test_cuda_graphs.py tests/engine/test_step_shapes.py
python3 perf/bench_scheduler.py --out $R
python3 perf/profile_steps.py --model-dir /tmp/m1b --chunk 224 --out $R
# device call 2 (serving/, gpu_tests_engine.txt), same code, carrying .device-bundle:
python3 -m pytest -q tests/engine/test_numerics.py tests/engine/test_async_scheduling.py tests/engine/test_sampler.py
OUT=/tmp/res/serving DEADLINE=330 bash perf/run_gpu_bench.sh
