#!/usr/bin/env bash
# On a GPU machine of the device tool: unpack .device-bundle/ (see tools/device_bundle.sh) into
# /tmp/ts and make a venv that sees the machine's torch/transformers plus our wheels, with numpy 1.26
# shadowing numpy 2. Source it:  source tools/device_unpack.sh
# Afterwards: tritonserver and perf_analyzer are on PATH, TRITON_SERVER_DIR is set, and
# `python` is /tmp/venv/bin/python (first on PATH, which is what the Python backend's stub uses).
BUNDLE=${BUNDLE:-.device-bundle}
mkdir -p /tmp/ts
tar -xJf "$BUNDLE/tritonserver.tar.xz" -C /tmp/ts
tar -xJf "$BUNDLE/perf_analyzer.tar.xz" -C /tmp/ts
python3 -m venv --system-site-packages /tmp/venv
/tmp/venv/bin/python -m pip install -q --no-index --no-deps --no-compile "$BUNDLE"/wheels/*.whl
/tmp/venv/bin/python -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || true
mkdir -p /tmp/ts/lib
ln -sf "$(ls /tmp/ts/nvidia_pytriton.libs/libb64-*.so.0d | head -1)" /tmp/ts/lib/libb64.so.0d
ln -sf "$(ls /tmp/ts/nvidia_pytriton.libs/libcudart-*.so.12* | head -1)" /tmp/ts/lib/libcudart.so.12
export TRITON_SERVER_DIR=/tmp/ts/pytriton/tritonserver
export PATH=/tmp/venv/bin:$TRITON_SERVER_DIR/bin:/tmp/ts/tritonclient-2.51.0.data/data/bin:$PATH
export LD_LIBRARY_PATH=/tmp/ts/lib:${LD_LIBRARY_PATH:-}
