# device call (nvidia-h100-x1, carrying .device-bundle), code at 32a91a1:
mkdir -p /tmp/res; (OUT=/tmp/res/serving DEADLINE=400 timeout 470 bash perf/run_gpu_bench.sh > /tmp/res/serving_stdout.txt 2>&1)
timeout 110 python3 perf/bench_scheduler.py --out /tmp/res/sched > /tmp/res/sched_log.txt 2>&1
# next call, same code (profile_mixed_224/; --chunk added to profile_steps.py in 723b274):
python3 perf/profile_steps.py --model-dir /tmp/m1b --chunk 224 --out $OUT/p
