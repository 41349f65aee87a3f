"""KV pressure through the real server: a cache far too small for the offered load preempts and
recomputes instead of failing, every stream gets exactly its solo text, nothing leaks; a full
waiting queue answers UNAVAILABLE; a request that could never fit is refused up front."""
from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from client import ClientError, GenerateRequest, stream_grpc
from engine import EngineConfig, LLMEngine, SamplingParams
from tests.conftest import greedy_streams, start_server, stop_server, write_model_repository
from tests.e2e.test_metrics_cancel import scrape, wait_for

NUM_BLOCKS = 12          # 192 tokens of KV cache: any 4 of the 20 streams (~62 tokens, 4 blocks each) overflow it
OUTPUT_TOKENS = 40
PROMPTS = [f"Request number {i}: tell me a story about the number {i * 7}" for i in range(20)]


@pytest.fixture(scope="module")
def small_cache_server(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("pressure")
    # On here though off by default on the CPU: asynchronous scheduling (the GPU default; preemption
    # while tokens are in flight) and the engine in its own process (engine/remote.py: outputs,
    # errors, the queue bound and the metrics' engine gauges all cross the process boundary), its
    # outputs sent to Triton by three threads at once (each stream's responses by one of them).
    repo = write_model_repository(tmp, tiny_model_dir, num_kv_blocks=str(NUM_BLOCKS), max_num_seqs="16",
                                  max_model_len="1024", max_waiting_requests="64", async_scheduling="true",
                                  engine_process="true", response_threads="3")
    srv = start_server(tmp, repo, tiny_model_dir)
    yield srv
    stop_server(srv)


def test_preemption_under_16_plus_streams_keeps_every_text(small_cache_server, tiny_model_dir):
    srv = small_cache_server
    solo_engine = LLMEngine(EngineConfig(model_dir=str(tiny_model_dir), device="cpu", num_kv_blocks=256,
                                         max_model_len=256))
    params = SamplingParams(max_tokens=OUTPUT_TOKENS, temperature=0, ignore_eos=True)
    solo = {p: solo_engine.generate([p], params)[0].text for p in PROMPTS}

    results = greedy_streams(srv, PROMPTS, OUTPUT_TOKENS)
    for prompt, text, n in results:
        assert n == OUTPUT_TOKENS
        assert text == solo[prompt], prompt
    metrics = wait_for(lambda: (s := scrape(srv)) and s["llm_kv_cache_blocks_used"] == 0 and s)
    assert metrics["vllm:num_preemptions_total"] > 0, "the test must actually force preemption"


def test_request_larger_than_the_whole_cache_is_refused(small_cache_server):
    srv = small_cache_server
    with pytest.raises(ClientError) as info:
        list(stream_grpc(srv.grpc_url, srv.model, GenerateRequest("x", max_tokens=NUM_BLOCKS * 16)))
    assert "max_tokens" in info.value.message and "KV cache" in info.value.message


@pytest.mark.parametrize("engine_process", ["false", "true"])
def test_full_waiting_queue_answers_unavailable(tmp_path_factory, tiny_model_dir, engine_process):
    tmp = tmp_path_factory.mktemp("queue")
    repo = write_model_repository(tmp, tiny_model_dir, num_kv_blocks="64", max_num_seqs="1",
                                  max_waiting_requests="2", engine_process=engine_process)
    srv = start_server(tmp, repo, tiny_model_dir)
    try:
        def run(i):
            req = GenerateRequest(f"queue test {i}", max_tokens=30, temperature=0.0, ignore_eos=True)
            try:
                chunks = list(stream_grpc(srv.grpc_url, srv.model, req, timeout=300))
                return "ok", sum(c.num_output_tokens for c in chunks)
            except ClientError as e:
                return "error", e.message

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(run, range(12)))
        refused = [msg for kind, msg in results if kind == "error"]
        served = [n for kind, n in results if kind == "ok"]
        assert refused and served, results
        assert all("queue is full" in msg for msg in refused), refused
        assert all(n == 30 for n in served)
        with pytest.raises(ClientError):
            list(stream_grpc(srv.grpc_url, srv.model, GenerateRequest("bad", max_tokens=0)))
        # Refusals are counted as rejections by reason (in both engine modes: the engine process
        # may refuse after queueing), never as finished requests.
        rejected = 'llm_requests_rejected_total{reason="%s"}'
        s = wait_for(lambda: (m := scrape(srv)).get(rejected % "invalid_argument", 0) >= 1 and m)
        assert s[rejected % "unavailable"] == len(refused)
        assert s[rejected % "invalid_argument"] == 1 and s[rejected % "internal"] == 0
        assert s.get('vllm:request_success_total{finished_reason="error"}', 0) == 0
        assert s['vllm:request_success_total{finished_reason="length"}'] == len(served)
    finally:
        stop_server(srv)


def test_long_prompts_in_attention_limited_chunks_keep_every_text(tmp_path_factory, tiny_model_dir):
    """Chunked prefill through the server with a small token budget and a small attention budget
    (max_prefill_attention_pairs): two long prompts go in chunks that shrink as their context
    grows, while short streams decode beside them; every text equals its solo run."""
    tmp = tmp_path_factory.mktemp("chunks")
    repo = write_model_repository(tmp, tiny_model_dir, max_num_batched_tokens="32", max_num_seqs="16",
                                  max_prefill_attention_pairs=str(32 * 64), max_model_len="1024",
                                  num_kv_blocks="256", async_scheduling="true")
    srv = start_server(tmp, repo, tiny_model_dir)
    try:
        solo_engine = LLMEngine(EngineConfig(model_dir=str(tiny_model_dir), device="cpu", num_kv_blocks=256,
                                             max_model_len=1024))
        long_prompts = [" ".join(f"w{i}x{j}" for j in range(150)) for i in range(2)]
        assert all(len(solo_engine.tokenize(p)) > 400 for p in long_prompts)
        prompts = long_prompts + PROMPTS[:8]
        params = SamplingParams(max_tokens=OUTPUT_TOKENS, temperature=0, ignore_eos=True)
        solo = {p: solo_engine.generate([p], params)[0].text for p in prompts}
        for prompt, text, n in greedy_streams(srv, prompts, OUTPUT_TOKENS):
            assert n == OUTPUT_TOKENS and text == solo[prompt], prompt[:40]
    finally:
        stop_server(srv)


def test_cancelling_a_waiting_request_ends_it_while_another_runs(tmp_path_factory, tiny_model_dir):
    """A request cancelled while it waits for a slot (it has no output yet) is ended at once: the
    model's cancellation watcher asks Triton about every open request, not only those with an
    output to send. Meanwhile the running stream goes on to its last token."""
    tmp = tmp_path_factory.mktemp("cancel_waiting")
    repo = write_model_repository(tmp, tiny_model_dir, num_kv_blocks="256", max_num_seqs="1",
                                  engine_process="true")
    srv = start_server(tmp, repo, tiny_model_dir)
    try:
        cancelled = 'vllm:request_success_total{finished_reason="cancelled"}'
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(lambda: list(stream_grpc(
                srv.grpc_url, srv.model, GenerateRequest("the running one", max_tokens=1500, ignore_eos=True),
                timeout=300)))
            wait_for(lambda: running.done() or scrape(srv).get("vllm:num_requests_running", 0) == 1)
            assert not running.done(), running.result()
            responses: queue.Queue = queue.Queue()
            client = grpcclient.InferenceServerClient(srv.grpc_url)
            client.start_stream(callback=lambda result, error: responses.put((result, error)))
            prompt = grpcclient.InferInput("text_input", [1], "BYTES")
            prompt.set_data_from_numpy(np.array(["the waiting one"], dtype=np.object_))
            client.async_stream_infer(srv.model, [prompt])
            wait_for(lambda: scrape(srv).get("vllm:num_requests_waiting", 0) == 1)
            client.stop_stream(cancel_requests=True)
            client.close()
            wait_for(lambda: scrape(srv).get(cancelled, 0) == 1 and scrape(srv)["vllm:num_requests_waiting"] == 0)
            assert not running.done(), "the running stream should outlast the cancellation"
            chunks = running.result(timeout=300)
        assert sum(c.num_output_tokens for c in chunks) == 1500
        got = [responses.get_nowait() for _ in range(responses.qsize())]
        assert all(result is None for result, _ in got), got   # no token of the cancelled one
    finally:
        stop_server(srv)
