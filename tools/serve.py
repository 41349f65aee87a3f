"""Launch the real `tritonserver` on our model repository, printing the exact command it runs.

    python -m tools.serve                      # serves model_repository/ on 8000/8001/8002
    HTTP_PORT=9000 GRPC_PORT=9001 METRICS_PORT=9002 MODEL_DIR=/models/llama python -m tools.serve

The server binary comes from the `nvidia-pytriton` wheel (tritonserver 2.51 with the Python
backend) installed in this environment, or `tritonserver` on PATH (as in NVIDIA's container).
The Python backend's stub finds its packages through the `python3` first on PATH, not PYTHONPATH,
so this environment's bin/ goes first on the server's PATH.

Security defaults: model control mode `none` (models cannot be loaded/unloaded over the network),
and the model-repository, shared-memory, trace and logging APIs are not exposed over HTTP/gRPC
unless --expose-admin-apis is given.

--unload-on-engine-failure: a model whose engine dies (a fatal step error, a killed engine process)
unloads itself, so /v2/models/<model>/ready turns 400 and a readiness probe takes the server out of
rotation. Triton 2.51 gives a Python model no other way to report "not ready", and its unload API
(pb_utils.unload_model) needs model control mode `explicit`: the server then starts with
`--model-control-mode=explicit --load-model=*` (every model in the repository, as with `none`),
and the repository API stays closed to clients unless --expose-admin-apis is also given.
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import sysconfig
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Restricting an API category to a header value no client sends makes it unreachable.
ADMIN_APIS = "model-repository,shared-memory,trace,logging"
EXIT_TIMEOUT_S = 30


def pytriton_server_dir() -> Path | None:
    """TRITON_SERVER_DIR (an unpacked device bundle) or the wheel in this environment."""
    explicit = os.environ.get("TRITON_SERVER_DIR")
    site = Path(sysconfig.get_paths()["purelib"])
    d = Path(explicit) if explicit else site / "pytriton" / "tritonserver"
    return d if (d / "bin" / "tritonserver").is_file() else None


def ensure_stub(server_dir: Path) -> None:
    """The backend stub must sit next to libtriton_python.so inside the wheel's tree (its RPATH
    points into the wheel); pick the one built for this Python."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    src = server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
    dst = server_dir / "backends" / "python" / "triton_python_backend_stub"
    if dst.is_file() and not src.is_file():
        return  # a trimmed tree (device bundle) with the stub already in place
    if not src.is_file():
        raise SystemExit(f"the nvidia-pytriton wheel has no Python backend stub for Python {version}")
    if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
        shutil.copy2(src, dst)


def server_command(model_repository: Path, http_port: int, grpc_port: int, metrics_port: int,
                   expose_admin_apis: bool = False, extra: list[str] | None = None,
                   exit_timeout_s: int = EXIT_TIMEOUT_S,
                   unload_on_engine_failure: bool = False) -> tuple[list[str], dict]:
    env = dict(os.environ)
    # SERVER_PYTHON_BIN picks another environment for the model than the launcher's own.
    python_bin = os.environ.get("SERVER_PYTHON_BIN") or str(Path(sys.executable).parent)
    env["PATH"] = f"{python_bin}{os.pathsep}{env.get('PATH', '')}"
    server_dir = pytriton_server_dir()
    if server_dir is not None:
        ensure_stub(server_dir)
        binary = str(server_dir / "bin" / "tritonserver")
        backend_args = [f"--backend-directory={server_dir / 'backends'}"]
    elif shutil.which("tritonserver"):
        binary, backend_args = shutil.which("tritonserver"), []
    else:
        raise SystemExit("tritonserver not found: run `make setup` (installs nvidia-pytriton==0.7.0)")
    cmd = [binary, f"--model-repository={model_repository}", *backend_args,
           f"--http-port={http_port}", f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}",
           f"--exit-timeout-secs={exit_timeout_s}"]
    if unload_on_engine_failure:
        # The model calls pb_utils.unload_model on itself (model.py) when it sees this variable.
        cmd += ["--model-control-mode=explicit", "--load-model=*"]
        env["LLM_UNLOAD_ON_ENGINE_FAILURE"] = "1"
    else:
        cmd += ["--model-control-mode=none"]
        env.pop("LLM_UNLOAD_ON_ENGINE_FAILURE", None)
    if not expose_admin_apis:
        # A random header value per launch: no client can present it, so these APIs are closed.
        key = secrets.token_hex(16)
        cmd += [f"--http-restricted-api={ADMIN_APIS}:admin-key={key}",
                f"--grpc-restricted-protocol={ADMIN_APIS}:admin-key={key}"]
    return cmd + list(extra or []), env


def printable(cmd: list[str]) -> list[str]:
    """The command with the admin key hidden: the APIs it guards are closed because nobody knows
    it, and the printed command ends up in logs."""
    return [re.sub(r"(:admin-key=)[0-9a-f]+$", r"\1HIDDEN", arg) for arg in cmd]


def drain_grace_s(exit_timeout_s: float) -> float:
    """How long running requests may go on after SIGTERM before the model aborts them: well inside
    tritonserver's exit timeout, past which Triton 2.51 crashes with responses still pending."""
    return max(0.5, min(exit_timeout_s - 5.0, 0.75 * exit_timeout_s))


def main() -> None:
    ap = argparse.ArgumentParser(description="Serve the model repository with tritonserver.")
    ap.add_argument("--model-repository", default=str(REPO_ROOT / "model_repository"))
    ap.add_argument("--http-port", type=int, default=int(os.environ.get("HTTP_PORT", 8000)))
    ap.add_argument("--grpc-port", type=int, default=int(os.environ.get("GRPC_PORT", 8001)))
    ap.add_argument("--metrics-port", type=int, default=int(os.environ.get("METRICS_PORT", 8002)))
    ap.add_argument("--exit-timeout", type=int, default=EXIT_TIMEOUT_S,
                    help="seconds tritonserver waits for in-flight requests on shutdown")
    ap.add_argument("--expose-admin-apis", action="store_true",
                    help="also serve the repository/shared-memory/trace/logging APIs")
    ap.add_argument("--unload-on-engine-failure", action="store_true",
                    help="a model whose engine dies unloads itself, so its ready endpoint reports it "
                         "(runs tritonserver in model control mode explicit; see above)")
    ap.add_argument("--dry-run", action="store_true", help="print the command and exit")
    args, extra = ap.parse_known_args()
    cmd, env = server_command(Path(args.model_repository).resolve(), args.http_port, args.grpc_port,
                              args.metrics_port, args.expose_admin_apis, extra, args.exit_timeout,
                              args.unload_on_engine_failure)
    model_dir = env.get("MODEL_DIR")
    print(("MODEL_DIR=" + shlex.quote(model_dir) + " " if model_dir else "")
          + ("LLM_UNLOAD_ON_ENGINE_FAILURE=1 " if args.unload_on_engine_failure else "")
          + f"PATH={shlex.quote(env['PATH'].split(os.pathsep)[0])}:$PATH " + shlex.join(printable(cmd)), flush=True)
    if args.dry_run:
        return
    sys.exit(run_with_drain(cmd, env, drain_grace_s(args.exit_timeout)))


def run_with_drain(cmd: list[str], env: dict, grace_s: float) -> int:
    """Run tritonserver as our child and forward SIGTERM/SIGINT to it, but first tell the model to
    drain: Triton gives a model no shutdown signal, and in 2.51 it crashes if streams are still
    open when its exit timeout runs out. The model (model.py) watches LLM_DRAIN_FILE: once it
    exists it refuses new requests, lets running ones finish for LLM_DRAIN_GRACE_S seconds, then
    ends the rest with UNAVAILABLE, so tritonserver can exit cleanly in time."""
    drain_file = Path(tempfile.mkdtemp(prefix="llm-drain-")) / "drain"
    env = {**env, "LLM_DRAIN_FILE": str(drain_file), "LLM_DRAIN_GRACE_S": f"{grace_s:.1f}"}
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum, _frame):
        drain_file.touch()
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    rc = proc.wait()
    shutil.rmtree(drain_file.parent, ignore_errors=True)
    return rc


if __name__ == "__main__":
    main()
