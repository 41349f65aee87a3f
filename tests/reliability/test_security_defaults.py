"""The launcher's security defaults, checked against the real tritonserver it starts: nothing can
be loaded or unloaded over the network, and the model-repository, shared-memory, trace and logging
APIs answer "restricted" on HTTP and gRPC, while inference and health stay open. Also the command
line each launcher option produces (tools/serve.py --dry-run)."""
from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import REPO_ROOT
from tools.serve import ADMIN_APIS, server_command


def _status(url: str, method: str = "GET", body: bytes | None = None) -> int:
    req = urllib.request.Request(url, method=method, data=body)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.parametrize("method,path", [
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/llm/load"),
    ("POST", "/v2/repository/models/llm/unload"),
    ("GET", "/v2/systemsharedmemory/status"),
    ("POST", "/v2/systemsharedmemory/region/r/register"),
    ("GET", "/v2/cudasharedmemory/status"),
    ("GET", "/v2/trace/setting"),
    ("GET", "/v2/logging"),
])
def test_admin_apis_are_closed_over_http(server, method, path):
    body = b"{}" if method == "POST" else None
    assert _status(f"http://{server.http_url}{path}", method, body) == 403


def test_admin_apis_are_closed_over_grpc_while_inference_apis_stay_open(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for call in (client.get_model_repository_index, lambda: client.unload_model("llm"),
                 lambda: client.load_model("llm"), client.get_system_shared_memory_status,
                 client.get_trace_settings, client.get_log_settings):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert "restricted" in str(info.value).lower(), info.value
    assert client.is_server_ready() and client.is_model_ready("llm")
    assert client.get_model_metadata("llm").name == "llm"
    # The refused unload above did nothing.
    assert _status(f"http://{server.http_url}/v2/models/llm/ready") == 200


def _dry_run(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "tools.serve", "--dry-run", *args], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_launcher_command_lines():
    default = _dry_run()
    assert "--model-control-mode=none" in default and "--load-model" not in default
    assert "--http-restricted-api=model-repository,shared-memory,trace,logging:admin-key=HIDDEN" in default
    assert "--grpc-restricted-protocol=model-repository,shared-memory,trace,logging:admin-key=HIDDEN" in default
    keys = set()
    for _ in range(2):   # the key itself: new for every launch, never printed
        cmd, _env = server_command(REPO_ROOT / "model_repository", 8000, 8001, 8002)
        key = next(a for a in cmd if a.startswith("--http-restricted-api=")).rsplit("admin-key=", 1)[1]
        assert len(key) == 32 and key not in default and f"--grpc-restricted-protocol={ADMIN_APIS}:admin-key={key}" in cmd
        keys.add(key)
    assert len(keys) == 2, "the admin key must be new for every launch"
    unload = _dry_run("--unload-on-engine-failure")
    assert "--model-control-mode=explicit --load-model=*" in unload.replace("'", "")
    assert "LLM_UNLOAD_ON_ENGINE_FAILURE=1" in unload and "--http-restricted-api=" in unload
    exposed = _dry_run("--expose-admin-apis")
    assert "restricted" not in exposed and "--model-control-mode=none" in exposed
