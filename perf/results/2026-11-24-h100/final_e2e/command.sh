# device call (nvidia-h100-x1, carrying .device-bundle) at 0c45e8b (engine and kernels as daedd39):
source tools/device_unpack.sh
python3 perf/gpu_e2e_check.py --out $R
python3 perf/bench_engine.py --model-dir /tmp/m1b --tag final --batches 1,32,128 --out $R
