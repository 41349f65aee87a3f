"""Stopping the server (SIGTERM to tritonserver, as Kubernetes and `docker stop` do) while streams
are in flight.

What Triton 2.51 does: on SIGTERM it closes the HTTP port at once, refuses new gRPC requests
("Request for unknown model: 'llm' has no available versions"), and waits for the model to become
unloadable. A decoupled Python model cannot be unloaded while responses are pending, so the running
streams go on to their end, finalize() runs after that, and the server exits. Hence:

- streams that finish within --exit-timeout-secs (30 s in tools/serve.py) all complete, nobody
  hangs, and the server exits 0 (test_streams_in_flight_complete_and_the_server_exits);
- streams that would outlive the exit timeout are NOT ended by us or by Triton: when the timeout
  expires tritonserver exits "immediately" while the Python backend still has live responses, which
  crashes it: either glibc aborts on a corrupted heap ("malloc(): unaligned fastbin chunk
  detected", SIGABRT) and the process deadlocks with its sockets open, so clients hang until their
  own deadline or until something SIGKILLs the server (Kubernetes does after
  terminationGracePeriodSeconds = 60), or it dies of SIGSEGV and the streams are cut (GOAWAY).
  Seen with the production 30 s timeout as well. test_streams_longer_than_the_exit_timeout is the
  (strict) xfail record of that, for tritonserver started directly.
- so the launcher (tools/serve.py, what `make serve`, the Docker image and the Kubernetes manifests
  run) takes the signal itself: it tells the model to drain (a file the model watches) and then
  forwards SIGTERM. The model refuses new requests, lets running ones go on for a grace period well
  inside the exit timeout, then ends the rest with UNAVAILABLE, and tritonserver exits cleanly
  (test_launcher_drains_streams_longer_than_the_exit_timeout).
"""
from __future__ import annotations

import signal
import threading
import time
import urllib.request

import pytest

from client import ClientError, GenerateRequest, stream_grpc
from perf.soak import reap
from tests.conftest import start_server, write_model_repository

SERVER = dict(num_kv_blocks="512", max_num_seqs="4", max_model_len="2048")


def _start(tmp_path_factory, model_dir, extra_args=None, launcher=False):
    tmp = tmp_path_factory.mktemp("shutdown")
    return start_server(tmp, write_model_repository(tmp, model_dir, **SERVER), model_dir, extra_args=extra_args,
                        launcher=launcher)


def _kill(srv) -> None:
    """Never leave a server behind, nor a stub process a crashed server orphaned."""
    reap(srv.process)


def _streams(srv, n: int, max_tokens: int, timeout: float):
    """n concurrent greedy streams on threads; returns (threads, results, first-chunk events)."""
    results: dict[int, tuple] = {}
    started = [threading.Event() for _ in range(n)]

    def run(i):
        tokens = 0
        try:
            for chunk in stream_grpc(srv.grpc_url, "llm", GenerateRequest(
                    f"Shutdown stream {i}", max_tokens=max_tokens, temperature=0.0, ignore_eos=True), timeout=timeout):
                tokens += chunk.num_output_tokens or 0
                started[i].set()
                if chunk.final:
                    results[i] = ("complete", tokens, time.monotonic(), chunk.finish_reason)
                    return
            results[i] = ("ended without a final response", tokens, time.monotonic(), None)
        except ClientError as e:
            results[i] = ("error", tokens, time.monotonic(), f"{e.code}: {e.message[:200]}")
        finally:
            started[i].set()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads, results, started


def test_streams_in_flight_complete_and_the_server_exits(tmp_path_factory, tiny_model_dir):
    srv = _start(tmp_path_factory, tiny_model_dir)
    exit_timeout = 30.0   # tools/serve.py --exit-timeout-secs
    try:
        # 6 streams, 4 running (max_num_seqs) and 2 waiting when the signal comes; a few seconds of work.
        threads, results, started = _streams(srv, 6, 400, timeout=exit_timeout + 30)
        for ev in started[:4]:
            assert ev.wait(30)
        t_sig = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        # A new request after the signal is refused at once, not queued or hung.
        time.sleep(0.5)
        t_new = time.monotonic()
        with pytest.raises(ClientError) as info:
            list(stream_grpc(srv.grpc_url, "llm", GenerateRequest("too late", max_tokens=2), timeout=10))
        assert time.monotonic() - t_new < 5
        assert "unknown model" in info.value.message or info.value.code == "UNAVAILABLE", info.value
        with pytest.raises(OSError):   # HTTP closes its port at once
            urllib.request.urlopen(f"http://{srv.http_url}/v2/health/ready", timeout=2)
        for t in threads:
            t.join(t_sig + exit_timeout - time.monotonic())
        assert not any(t.is_alive() for t in threads), "a client still waits after the exit timeout"
        srv.process.wait(max(1.0, t_sig + exit_timeout + 5 - time.monotonic()))
        assert srv.process.returncode == 0, srv.log()[-3000:]
        assert len(results) == 6
        for i, (state, tokens, t_end, detail) in results.items():
            assert t_end - t_sig < exit_timeout
            # Every stream ends: complete (what 2.51 does here) or with one clear error from finalize.
            assert (state == "complete" and tokens == 400) or \
                (state == "error" and "being unloaded" in (detail or "")), (i, state, tokens, detail)
        print(f"\nshutdown: {sorted(r[0] for r in results.values())}, last stream ended "
              f"{max(r[2] for r in results.values()) - t_sig:.1f}s after SIGTERM, server exited "
              f"{srv.process.returncode} ")
    finally:
        _kill(srv)


@pytest.mark.xfail(reason="Triton 2.51: when --exit-timeout-secs expires with decoupled Python-backend "
                          "responses pending, tritonserver crashes (heap corruption: SIGABRT "
                          "and a deadlock, or SIGSEGV) instead of exiting; the model gets no shutdown signal before that (see the module docstring)",
                   strict=True)
def test_streams_longer_than_the_exit_timeout(tmp_path_factory, tiny_model_dir):
    exit_timeout = 3
    srv = _start(tmp_path_factory, tiny_model_dir, extra_args=[f"--exit-timeout-secs={exit_timeout}"])
    try:
        threads, results, started = _streams(srv, 4, 1800, timeout=exit_timeout + 10)
        for ev in started:
            assert ev.wait(30)
        t_sig = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        for t in threads:   # bounded: each stream has its own deadline (exit_timeout + 10 s)
            t.join(30)
        try:
            srv.process.wait(max(0.5, t_sig + exit_timeout + 5 - time.monotonic()))
        except Exception:
            pass
        exited = srv.process.returncode is not None
        ended_in_time = {i: r for i, r in results.items() if r[2] - t_sig < exit_timeout + 5}
        print(f"\nexit timeout {exit_timeout}s: server exited={exited} rc={srv.process.returncode}; streams "
              f"{[(r[0], r[1], round(r[2] - t_sig, 1), r[3]) for r in results.values()]}")
        # What a clean shutdown would be: the server exits 0 and every stream ends in time, either
        # complete or with the model's clear error. Observed instead: SIGABRT and a deadlocked
        # process with the streams hanging, or a SIGSEGV (rc -11) that cuts them (GOAWAY).
        assert exited and srv.process.returncode == 0, f"tritonserver: rc={srv.process.returncode}"
        assert len(ended_in_time) == 4, "a stream was still open after the exit timeout"
        assert all(r[0] == "complete" or "being unloaded" in (r[3] or "") for r in results.values()), results
    finally:
        _kill(srv)


def test_launcher_drains_streams_longer_than_the_exit_timeout(tmp_path_factory, tiny_model_dir):
    exit_timeout = 4   # the launcher's drain grace is then 0.5 s (tools/serve.py drain_grace_s)
    srv = _start(tmp_path_factory, tiny_model_dir, extra_args=[f"--exit-timeout={exit_timeout}"], launcher=True)
    try:
        threads, results, started = _streams(srv, 4, 1800, timeout=exit_timeout + 30)
        for ev in started:
            assert ev.wait(30)
        t_sig = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)   # to the launcher, as Kubernetes / docker stop do
        for t in threads:
            t.join(exit_timeout + 30)
        srv.process.wait(exit_timeout + 10)
        assert srv.process.returncode == 0, srv.log()[-3000:]
        assert len(results) == 4
        for i, (state, tokens, t_end, detail) in results.items():
            assert t_end - t_sig < exit_timeout, (i, t_end - t_sig)
            assert state == "error" and "being unloaded" in (detail or ""), (i, state, tokens, detail)
            assert 0 < tokens < 1800
        assert "server shutting down; finishing in-flight requests" in srv.log()
    finally:
        _kill(srv)
