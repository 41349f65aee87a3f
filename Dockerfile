# Triton Inference Server 2.51 (release 24.10) with our engine as a decoupled Python-backend model.
#   docker build -t triton-llm .
#   docker run --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 \
#     -v /path/to/hf-llama:/models/llm -e MODEL_DIR=/models/llm triton-llm
FROM nvcr.io/nvidia/tritonserver:24.10-py3

WORKDIR /opt/triton-llm
# The container's python3 is the one the Python backend's stub uses. numpy<2: the 2.51 Python
# backend sends empty numeric outputs with numpy 2.
RUN python3 -m pip install --no-cache-dir "numpy<2" safetensors==0.8.0 tokenizers==0.23.3 \
      "torch==2.5.1" "triton==3.1.0" "tritonclient[grpc,http]==2.51.0"

COPY pyproject.toml README.md ./
COPY engine ./engine
COPY kernels ./kernels
COPY client ./client
COPY tools ./tools
COPY model_repository ./model_repository
RUN python3 -m pip install --no-cache-dir --no-deps -e . \
 && python3 -m tools.random_llama --size small --out /opt/triton-llm/models/default

EXPOSE 8000 8001 8002
# The model's own endpoint: after a fatal engine error the model unloads itself (below), while
# /v2/health/ready would stay 200.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
  CMD curl -fsS localhost:8000/v2/models/llm/ready || exit 1
# tools/serve.py finds the container's tritonserver on PATH, prints the command, and applies the
# same security defaults as `make serve` (admin APIs closed); --unload-on-engine-failure lets a
# model whose engine died unload itself so that it reports not ready (README, "Health").
CMD ["python3", "-m", "tools.serve", "--model-repository", "/opt/triton-llm/model_repository", "--unload-on-engine-failure"]
