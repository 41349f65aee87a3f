export GIT_COMMIT=${GIT_COMMIT:-dirty} PYTHONUNBUFFERED=1; R=$OUT/r; mkdir -p $R
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > /dev/null 2>&1 &
python3 -m pytest -q tests/kernels tests/engine/test_cuda_graphs.py tests/engine/test_async_scheduling.py 2>&1 | tail -15 > $R/gpu_tests.txt; tail -3 $R/gpu_tests.txt
python3 - <<'PY' 2>&1 | tee $R/pdl_probe.txt
import torch, triton
from kernels.pdl import pdl_enabled
print("pdl_enabled", pdl_enabled(torch.device("cuda")), torch.version.cuda, torch.cuda.get_device_capability())
PY
wait
for mode in "LLM_PDL=1 LLM_SMALL_LINEAR=1" "LLM_PDL=0 LLM_SMALL_LINEAR=1" "LLM_PDL=0 LLM_SMALL_LINEAR=0" "LLM_PDL=1 LLM_SMALL_LINEAR=0"; do
  tag=$(echo $mode | tr -d ' =_' | tr 'A-Z' 'a-z')
  env $mode timeout 150 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag $tag --batches 1 --out $R 2>&1 | grep -E "batch|graph_ms|ratio" | tee -a $R/engine.log
done
LLM_PDL=1 timeout 120 python3 perf/bench_small_linear.py --quick --sizes 1b --out $R/pdl 2>&1 | tee $R/small_linear_pdl.log
