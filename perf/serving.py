"""Start/stop a real tritonserver on free ports for benchmarks (wraps the tests/conftest helpers).

    python -m perf.serving --model-dir models/default            # serve until Ctrl-C, print the URLs
    python -m perf.serving --tiny                                # build the tiny test model first

From Python:

    from perf.serving import served
    with served(model_dir, kind="KIND_GPU", max_model_len="2048") as server:
        print(server.grpc_url)        # "127.0.0.1:<port>"

Engine options are config.pbtxt `parameters` (strings), as in tests/conftest.write_model_repository.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def default_kind() -> str:
    try:
        import torch
        return "KIND_GPU" if torch.cuda.is_available() else "KIND_CPU"
    except Exception:
        return "KIND_CPU"


def instance_group(kind: str, count: int = 1) -> str:
    """`count` instances on one device (GPU 0, or the CPU), each running its own engine."""
    gpus = " gpus: [0]" if kind == "KIND_GPU" else ""
    return f"instance_group [{{ count: {count}, kind: {kind}{gpus} }}]"


def start(model_dir: str | Path, kind: str | None = None, tmp: str | Path | None = None,
          timeout: float = 300.0, instances: int = 1, **params: str):
    """Write a model repository for `model_dir` and start tritonserver; returns the conftest
    Server (grpc_url, http_url, metrics_url, model, process, log())."""
    from tests.conftest import start_server, write_model_repository
    tmp = Path(tmp or tempfile.mkdtemp(prefix="perf-server-"))
    tmp.mkdir(parents=True, exist_ok=True)
    repo = write_model_repository(tmp, Path(model_dir), instance_group=instance_group(kind or default_kind(), instances),
                                  **{k: str(v) for k, v in params.items()})
    return start_server(tmp, repo, Path(model_dir), timeout=timeout)


def stop(server) -> None:
    from tests.conftest import stop_server
    stop_server(server)


@contextlib.contextmanager
def served(model_dir: str | Path, kind: str | None = None, tmp: str | Path | None = None,
           timeout: float = 300.0, **params: str):
    server = start(model_dir, kind, tmp, timeout, **params)
    try:
        yield server
    finally:
        stop(server)


def main() -> None:
    ap = argparse.ArgumentParser(description="Serve a model with tritonserver on free ports (Ctrl-C stops).")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--tiny", action="store_true", help="build the tiny test checkpoint and serve it")
    ap.add_argument("--kind", default=None, choices=["KIND_CPU", "KIND_GPU"])
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="engine parameter (config.pbtxt), e.g. num_kv_blocks=256")
    args = ap.parse_args()
    params = dict(p.split("=", 1) for p in args.param)
    model_dir = args.model_dir
    if args.tiny or not model_dir:
        from tools.random_llama import build
        model_dir = str(build(Path(tempfile.mkdtemp(prefix="tiny-")) / "tiny", size="tiny", seed=1))
    import signal

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)  # kill <pid> stops the server too
    server = start(model_dir, args.kind, **params)
    print(f"grpc {server.grpc_url}  http {server.http_url}  metrics {server.metrics_url}  "
          f"model_dir {model_dir}  log {server.log_path}", flush=True)
    try:
        while server.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        stop(server)


if __name__ == "__main__":
    main()
