"""Shared fixtures: seeded test checkpoints and a real tritonserver serving our model.

The server fixture copies model_repository/llm into a temporary repository, points it at a tiny
checkpoint, pins a KIND_CPU instance (or KIND_GPU on a GPU machine) and starts the real
`tritonserver` through tools.serve on free ports. Nothing about Triton is mocked.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tools.random_llama import build  # noqa: E402
from tools.serve import server_command  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """GQA (4 query / 2 KV heads), untied, fp32: the default model of the engine tests."""
    return build(tmp_path_factory.mktemp("tiny"), size="tiny", seed=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    http_url: str
    grpc_url: str
    metrics_url: str
    model: str
    model_dir: Path
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def write_model_repository(dest: Path, model_dir: Path, instance_group: str | None = None,
                           **params: str) -> Path:
    """A copy of model_repository/llm with parameters overridden (values are strings)."""
    src = REPO_ROOT / "model_repository" / "llm"
    repo = dest / "repo"
    shutil.copytree(src, repo / "llm", ignore=shutil.ignore_patterns("__pycache__"))
    config = (repo / "llm" / "config.pbtxt").read_text()
    params = {"model_dir": str(model_dir), **params}
    for key, value in params.items():
        pattern = re.compile(r'(parameters: \{ key: "%s", value: \{ string_value: ")[^"]*(")' % key)
        if pattern.search(config):
            config = pattern.sub(lambda m: m.group(1) + value + m.group(2), config)
        else:
            config += f'\nparameters: {{ key: "{key}", value: {{ string_value: "{value}" }} }}\n'
    if instance_group is None:
        import torch
        kind = "KIND_GPU" if torch.cuda.is_available() else "KIND_CPU"
        instance_group = f"instance_group [{{ count: 1, kind: {kind} }}]"
    config += "\n" + instance_group + "\n"
    (repo / "llm" / "config.pbtxt").write_text(config)
    return repo


def start_server(tmp: Path, repo: Path, model_dir: Path, timeout: float = 180.0,
                 extra_args: list[str] | None = None, launcher: bool = False) -> Server:
    """tritonserver on free ports; with `launcher`, through `python -m tools.serve` (as `make
    serve` and the Docker image run it: signals go to the launcher, which drains the model)."""
    http, grpc, metrics = free_port(), free_port(), free_port()
    if launcher:
        cmd = [sys.executable, "-m", "tools.serve", f"--model-repository={repo}", f"--http-port={http}",
               f"--grpc-port={grpc}", f"--metrics-port={metrics}", *(extra_args or [])]
        env = dict(os.environ)
    else:
        cmd, env = server_command(repo, http, grpc, metrics, extra=extra_args)
    env.pop("MODEL_DIR", None)   # the test's config.pbtxt decides
    log_path = tmp / "tritonserver.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=REPO_ROOT)
    server = Server(f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", f"127.0.0.1:{metrics}", "llm",
                    model_dir, proc, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tritonserver exited with {proc.returncode}:\n{server.log()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=1) as r:
                ready = r.status == 200
            # Triton starts its metrics service ~40 ms after the HTTP one: a test that scrapes at
            # once found the port closed (connection refused) once in a full run.
            if ready:
                urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=1).close()
                return server
        except OSError:
            pass
        time.sleep(0.25)
    stop_server(server)
    raise RuntimeError(f"tritonserver not ready after {timeout}s:\n{server.log()[-4000:]}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(60)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory, tiny_model_dir):
    """One real tritonserver for the end-to-end tests (CPU instance, small KV cache)."""
    tmp = tmp_path_factory.mktemp("server")
    repo = write_model_repository(tmp, tiny_model_dir, num_kv_blocks="256", max_num_seqs="32",
                                  max_model_len="1024")
    srv = start_server(tmp, repo, tiny_model_dir)
    yield srv
    stop_server(srv)
    assert srv.process.returncode is not None


def greedy_streams(server: Server, prompts: list[str], max_tokens: int, timeout: float = 300.0):
    """Stream every prompt at once (one thread each, greedy, fixed length) through gRPC;
    returns (prompt, text, output tokens) per prompt, in order."""
    from concurrent.futures import ThreadPoolExecutor

    from client import GenerateRequest, stream_grpc

    def run(prompt):
        req = GenerateRequest(prompt, max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        chunks = list(stream_grpc(server.grpc_url, server.model, req, timeout=timeout))
        return prompt, "".join(c.text for c in chunks), sum(c.num_output_tokens for c in chunks)

    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(run, prompts))
