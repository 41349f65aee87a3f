#!/usr/bin/env bash
# stop 24, one device call (nvidia-h100-x1, a fresh machine), carrying .device-bundle built by
# `bash tools/device_bundle.sh` at ae6a9b7. The first full bench's output is this folder's top level
# (serving.json, report.md, *.png, every phase's JSON + log); the repeat on the same machine is
# serving_2_ae6a9b7/, the end-to-end numerics check e2e_ae6a9b7/.
export PYTHONUNBUFFERED=1 GIT_COMMIT=ae6a9b7; R=$OUT/res; mkdir -p $R; nvidia-smi -L > $R/gpu.txt; lscpu > $R/cpu.txt
source tools/device_unpack.sh > $R/unpack.log 2>&1
DEADLINE=380 OUT=$R/serving_1 bash perf/run_gpu_bench.sh > $R/serving_1_stdout.txt 2>&1
timeout 150 python3 perf/gpu_e2e_check.py --out $R/e2e > $R/e2e_stdout.txt 2>&1
DEADLINE=300 OUT=$R/serving_2 bash perf/run_gpu_bench.sh > $R/serving_2_stdout.txt 2>&1
# the tool returns at most 8 files from $OUT, so the results travel as one archive; the model
# repository copy, the server dir and perf_analyzer's per-request exports are dropped (size)
rm -rf $R/*/server $R/*/repo; find $R -name '*_export.json' -delete; find $R -name 'inputs_*.json' -delete
tar -C $OUT -cJf $OUT/results.tar.xz res
