"""Faults inside the server: an exception while handling one request fails only that request; a
fatal engine error fails every in-flight request with a clear error, later requests get UNAVAILABLE
at once, and llm_engine_healthy drops to 0.

No natural per-request fault is left once the fuzz test's findings are fixed (a bad request is
refused up front, and a response is built from text the tokenizer made), so these tests use the
model's test-only hook: LLM_FAULT_INJECTION in the server's environment (parsed by
engine/faults.py; off unless set). start_server passes the environment through.
"""
from __future__ import annotations

import json
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from client import ClientError, GenerateRequest, stream_grpc
from engine import EngineConfig, LLMEngine, SamplingParams
from perf.soak import grpc_stream, reap, scrape_metrics, stop_timed, tensors_for, wait_until
from tests.conftest import start_server, stop_server, write_model_repository

SUBMIT_MARKER = "FAULT-ON-SUBMIT"
RESPONSE_MARKER = "FAULT-ON-RESPONSE"
ENGINE_STEPS = 40
SERVER = dict(num_kv_blocks="64", max_num_seqs="16", max_model_len="512")
GOOD = [f"Fault test {i}: a stream that must not notice its neighbours' faults" for i in range(8)]
TIMEOUT_S = 60.0
# What Triton 2.51's HTTP generate/generate_stream endpoints answer for an error response of a
# (decoupled) model, whatever its TritonError code: UNAVAILABLE and INTERNAL arrive as 400 too.
HTTP_STATUS_OF_MODEL_ERRORS = 400


@contextmanager
def fault_env(spec: str):
    old = os.environ.get("LLM_FAULT_INJECTION")
    os.environ["LLM_FAULT_INJECTION"] = spec
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LLM_FAULT_INJECTION", None)
        else:
            os.environ["LLM_FAULT_INJECTION"] = old


def _start(tmp_path_factory, model_dir, spec: str):
    tmp = tmp_path_factory.mktemp("faults")
    repo = write_model_repository(tmp, model_dir, **SERVER)
    with fault_env(spec):
        return start_server(tmp, repo, model_dir)


def _http_generate(srv, prompt: str, params: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://{srv.http_url}/v2/models/llm/generate", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"text_input": prompt, "sampling_parameters": json.dumps(params)}).encode())
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def request_fault_server(tmp_path_factory, tiny_model_dir):
    srv = _start(tmp_path_factory, tiny_model_dir,
                 f"fail_request_with_prompt={SUBMIT_MARKER};fail_response_with_prompt={RESPONSE_MARKER}")
    yield srv
    stop_server(srv)
    reap(srv.process)


def test_a_per_request_fault_fails_only_that_request(request_fault_server, tiny_model_dir):
    srv = request_fault_server
    solo_engine = LLMEngine(EngineConfig(model_dir=str(tiny_model_dir), device="cpu", num_kv_blocks=64, max_model_len=512))
    greedy = {"max_tokens": 24, "temperature": 0, "ignore_eos": True}
    solo = {p: solo_engine.generate([p], SamplingParams.from_dict(greedy))[0].text for p in GOOD}
    before = scrape_metrics(srv.metrics_url)

    def run(job):
        kind, prompt = job
        return kind, prompt, grpc_stream(srv.grpc_url, tensors_for(prompt, greedy), TIMEOUT_S, grace_s=0.1)

    jobs = [("good", p) for p in GOOD] + [("submit", f"{SUBMIT_MARKER} {i}") for i in range(4)] + \
        [("response", f"{RESPONSE_MARKER} {i}") for i in range(4)]
    jobs = [jobs[i] for i in (0, 8, 1, 12, 2, 9, 3, 13, 4, 10, 5, 14, 6, 11, 7, 15)]   # interleaved
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(run, jobs))
    for kind, prompt, o in results:
        assert not o.lost, (kind, prompt)
        if kind == "good":
            assert o.error is None and o.final and o.text == solo[prompt] and o.tokens == 24, (prompt, o)
        elif kind == "submit":   # failed in execute(): one error, nothing else
            assert o.responses == 0 and o.errors == 1, o
            assert "internal error" in o.error and "injected fault" in o.error, o.error
        else:                    # failed while its second response was built: one response, then one error
            assert o.responses == 1 and o.errors == 1 and not o.final, o
            assert "internal error sending the response" in o.error and "injected fault" in o.error, o.error
    # HTTP sees the same failure. Triton 2.51's generate endpoints answer every error a model sends
    # with 400, whatever its code (INTERNAL here; README's table says 500).
    status, body = _http_generate(srv, f"{SUBMIT_MARKER} over http", {"max_tokens": 2})
    assert status == HTTP_STATUS_OF_MODEL_ERRORS and "injected fault" in body["error"], (status, body)
    # The failed streams' KV blocks are freed, the engine is fine, and it still serves.
    after = wait_until(lambda: (s := scrape_metrics(srv.metrics_url)) and s["llm_kv_cache_blocks_used"] == 0
                       and s["vllm:num_requests_running"] == 0 and s, 20.0)
    assert after, "KV blocks of the failed requests were not freed"
    assert after["llm_engine_healthy"] == 1
    errors = after.get('vllm:request_success_total{finished_reason="error"}', 0) - \
        before.get('vllm:request_success_total{finished_reason="error"}', 0)
    assert errors == 4, errors   # the response faults (submit faults never reached the engine)
    chunks = list(stream_grpc(srv.grpc_url, "llm", GenerateRequest(GOOD[0], sampling=greedy), timeout=TIMEOUT_S))
    assert "".join(c.text for c in chunks) == solo[GOOD[0]]
    rc, seconds = stop_timed(srv.process)   # the failed requests left nothing that blocks unloading
    assert rc == 0 and seconds < 15, (rc, seconds)
    print(f"\nper-request faults: {len(GOOD)} good streams completed with their solo text, 4 submit faults and "
          f"4 response faults failed alone (HTTP: {status})")


def test_fault_injection_is_off_by_default(server):
    """The session server runs without LLM_FAULT_INJECTION: the markers are just text."""
    for marker in (SUBMIT_MARKER, RESPONSE_MARKER):
        chunks = list(stream_grpc(server.grpc_url, "llm", GenerateRequest(f"{marker} x", max_tokens=3), timeout=TIMEOUT_S))
        assert sum(c.num_output_tokens for c in chunks) == 3


@pytest.fixture(scope="module")
def engine_fault_server(tmp_path_factory, tiny_model_dir):
    srv = _start(tmp_path_factory, tiny_model_dir, f"fail_engine_after_steps={ENGINE_STEPS}")
    yield srv
    stop_server(srv)
    reap(srv.process)


def test_a_fatal_engine_fault_fails_everything_in_flight_and_later_requests_at_once(engine_fault_server):
    srv = engine_fault_server
    assert scrape_metrics(srv.metrics_url)["llm_engine_healthy"] == 1
    long = {"max_tokens": 300, "temperature": 0, "ignore_eos": True}

    def run(i):
        return grpc_stream(srv.grpc_url, tensors_for(f"In flight {i} when the engine dies", long), TIMEOUT_S,
                           grace_s=0.1)

    t0 = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(run, range(6)))
    for o in results:
        assert not o.lost and not o.final and o.errors == 1, o
        # In flight when the engine died: UNAVAILABLE's words (retry elsewhere), as for later requests.
        assert "the engine has stopped: engine step failed" in o.error and "injected engine fault" in o.error, o.error
        assert o.tokens < 300
    assert time.monotonic() - t0 < 30
    assert any(o.tokens > 0 for o in results), "the fault must hit streams that were already generating"

    # Later requests: refused at once with UNAVAILABLE's message, over gRPC and HTTP.
    for i in range(3):
        t = time.monotonic()
        with pytest.raises(ClientError) as info:
            list(stream_grpc(srv.grpc_url, "llm", GenerateRequest(f"after the fault {i}", max_tokens=4), timeout=TIMEOUT_S))
        assert time.monotonic() - t < 2.0
        assert "the engine has stopped" in info.value.message, info.value.message
    t = time.monotonic()
    status, body = _http_generate(srv, "after the fault, over HTTP", {"max_tokens": 4})
    assert time.monotonic() - t < 2.0
    assert status == HTTP_STATUS_OF_MODEL_ERRORS and "the engine has stopped" in body["error"], (status, body)
    # The liveness signal: llm_engine_healthy drops to 0 (refreshed every 0.5 s). Without
    # --unload-on-engine-failure (next test) readiness stays 200: Triton 2.51 gives a Python model
    # no way to mark itself not ready short of unloading (README, "Health").
    assert wait_until(lambda: scrape_metrics(srv.metrics_url)["llm_engine_healthy"] == 0, 5.0)
    assert _http_status(f"http://{srv.http_url}/v2/health/ready") == 200
    assert _http_status(f"http://{srv.http_url}/v2/models/llm/ready") == 200
    assert wait_until(lambda: "the model stays loaded" in srv.log(), 5.0)
    assert "injected engine fault" in srv.log()
    rc, seconds = stop_timed(srv.process)   # a dead engine does not block the shutdown either
    assert rc == 0 and seconds < 15, (rc, seconds)
    print(f"\nfatal engine fault: 6/6 in-flight streams failed with the engine error after "
          f"{sorted(o.tokens for o in results)} tokens; later requests refused in < 2 s (HTTP: {status}); "
          f"llm_engine_healthy = 0")


def _http_status(url: str, method: str = "GET") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method, data=b"" if method == "POST" else None),
                                    timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _start_unloading(tmp_path_factory, model_dir, spec: str, engine_process: str):
    """The launcher with --unload-on-engine-failure, the given fault injected."""
    tmp = tmp_path_factory.mktemp("unload")
    repo = write_model_repository(tmp, model_dir, engine_process=engine_process, **SERVER)
    with fault_env(spec):
        return start_server(tmp, repo, model_dir, launcher=True, extra_args=["--unload-on-engine-failure"])


def _four_long_streams(srv, label: str):
    long = {"max_tokens": 300, "temperature": 0, "ignore_eos": True}
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda i: grpc_stream(srv.grpc_url, tensors_for(f"{label} {i}", long), TIMEOUT_S,
                                                   grace_s=0.1), range(4)))


def test_with_unload_on_engine_failure_a_dead_engine_makes_the_model_not_ready(tmp_path_factory, tiny_model_dir):
    """`tools/serve.py --unload-on-engine-failure`: after the fatal fault the model unloads itself,
    so /v2/models/llm/ready answers 400 (what a readiness probe needs), while the streams in flight
    got the engine's error first and the repository API stays closed to clients. With the engine
    in its own process (engine_process, the GPU default), whose fatal step reaches the stub as a
    message."""
    srv = _start_unloading(tmp_path_factory, tiny_model_dir, f"fail_engine_after_steps={ENGINE_STEPS}", "true")
    try:
        model_ready = f"http://{srv.http_url}/v2/models/llm/ready"
        assert _http_status(model_ready) == 200
        for o in _four_long_streams(srv, "Doomed"):
            assert not o.lost and o.errors == 1 and "injected engine fault" in o.error, o
        assert wait_until(lambda: _http_status(model_ready) == 400, 20.0), "the model still reports ready"
        assert _http_status(f"http://{srv.http_url}/v2/health/live") == 200   # the server itself is up
        # A request now fails at once with Triton's own clear error (the model is not loaded).
        t = time.monotonic()
        with pytest.raises(ClientError) as info:
            list(stream_grpc(srv.grpc_url, "llm", GenerateRequest("after the unload", max_tokens=4), timeout=TIMEOUT_S))
        assert time.monotonic() - t < 2.0 and "llm" in info.value.message, info.value.message
        # Explicit mode, yet nobody outside can load the model back (or anything else).
        assert _http_status(f"http://{srv.http_url}/v2/repository/models/llm/load", "POST") == 403
        assert "unloading model 'llm' so that it reports not ready" in srv.log()
        assert wait_until(lambda: "successfully unloaded 'llm'" in srv.log(), 20.0), srv.log()[-3000:]
        rc, seconds = stop_timed(srv.process)
        assert rc == 0 and seconds < 15, (rc, seconds)
        print(f"\nunload on engine failure: 4/4 streams got the engine error, model ready -> 400, "
              f"later request: {info.value.message[:80]!r}")
    finally:
        stop_server(srv)
        reap(srv.process)


@pytest.mark.parametrize("engine_process", ["true", "false"])
def test_a_real_device_fault_fails_requests_and_unloads_the_model(tmp_path_factory, tiny_model_dir, engine_process):
    """A device-side assert on the GPU (LLM_FAULT_INJECTION device_fault_after_steps; an
    IndexError on the CPU) kills the engine's CUDA context for good: streams in flight get the
    error, the model unloads itself (launcher --unload-on-engine-failure), later requests fail at
    once, and the server still stops cleanly, with the engine in its own process or in the stub's."""
    import torch
    on_gpu = torch.cuda.is_available()
    if not on_gpu and engine_process == "false":
        pytest.skip("on the CPU this is the injected-exception path tested above")
    srv = _start_unloading(tmp_path_factory, tiny_model_dir, f"device_fault_after_steps={ENGINE_STEPS}", engine_process)
    try:
        results = _four_long_streams(srv, "On a faulty GPU")
        expected = ("CUDA error", "device-side assert") if on_gpu else ("IndexError",)
        for o in results:
            assert not o.lost and o.errors == 1 and "the engine has stopped: engine step failed" in o.error, o
            assert any(e in o.error for e in expected), o.error
        assert wait_until(lambda: _http_status(f"http://{srv.http_url}/v2/models/llm/ready") == 400, 30.0)
        with pytest.raises(ClientError):
            list(stream_grpc(srv.grpc_url, "llm", GenerateRequest("after the fault", max_tokens=4), timeout=TIMEOUT_S))
        assert _http_status(f"http://{srv.http_url}/v2/health/live") == 200
        rc, seconds = stop_timed(srv.process)
        assert rc == 0 and seconds < 30, (rc, seconds)
        print(f"\ndevice fault ({'GPU' if on_gpu else 'CPU'}, engine_process={engine_process}): 4/4 streams "
              f"failed with {results[0].error[:120]!r}; model unloaded; server stopped in {seconds:.1f}s")
    finally:
        stop_server(srv)
        reap(srv.process)
