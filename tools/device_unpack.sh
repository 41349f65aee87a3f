#!/usr/bin/env bash
# On a GPU machine of the device tool: unpack .device-bundle/ (see tools/device_bundle.sh).
# Source it:  source tools/device_unpack.sh
# Afterwards:
#   - tritonserver and perf_analyzer are on PATH, TRITON_SERVER_DIR is set (tools/serve.py uses it);
#   - tritonclient/rapidjson are importable by the machine's python3 (PYTHONPATH=/tmp/site);
#   - SERVER_PYTHON_BIN=/tmp/venv/bin: the Python environment the model's backend stub runs in
#     (tools/serve.py puts it first on the server's PATH). It is the machine's packages plus
#     numpy 1.26 in front, because the 2.51 Python backend mishandles numpy 2 outputs. Only the
#     server uses it: the machine's scipy/sklearn (imported by transformers) need numpy 2.
BUNDLE=${BUNDLE:-.device-bundle}
mkdir -p /tmp/ts /tmp/site
tar -xJf "$BUNDLE/tritonserver.tar.xz" -C /tmp/ts
tar -xJf "$BUNDLE/perf_analyzer.tar.xz" -C /tmp/ts
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
  "$BUNDLE"/wheels/*.whl
# The image's python3 is itself a venv (/opt/torch/.venv): a venv made from it does not see its
# packages, so a .pth file appends them after the new venv's own (numpy 1.26 then wins).
HOST_SITE=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
python3 -m venv /tmp/venv
echo "$HOST_SITE" > "$(/tmp/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/host-packages.pth"
tar -xJf "$BUNDLE/numpy.tar.xz" -C "$(/tmp/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p /tmp/ts/lib
ln -sf "$(ls /tmp/ts/nvidia_pytriton.libs/libb64-*.so.0d | head -1)" /tmp/ts/lib/libb64.so.0d
ln -sf "$(ls /tmp/ts/nvidia_pytriton.libs/libcudart-*.so.12* | head -1)" /tmp/ts/lib/libcudart.so.12
export TRITON_SERVER_DIR=/tmp/ts/pytriton/tritonserver
export SERVER_PYTHON_BIN=/tmp/venv/bin
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PATH=$TRITON_SERVER_DIR/bin:/tmp/ts/tritonclient-2.51.0.data/data/bin:$PATH
export LD_LIBRARY_PATH=/tmp/ts/lib:${LD_LIBRARY_PATH:-}
