"""End to end through a real tritonserver: the served text is the engine's text, streaming and
non-streaming agree, concurrent streams do not disturb each other, and bad requests get a clear
error while good ones keep streaming."""
from __future__ import annotations

import json
import queue
import threading
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from client import ClientError, GenerateRequest, generate_grpc, generate_http, stream_grpc, stream_http
from engine import EngineConfig, LLMEngine, SamplingParams
from tests.conftest import greedy_streams

PROMPTS = [
    "Once upon a time",
    "The quick brown fox jumps over the lazy dog, and then the dog wakes up and chases the fox "
    "across the field, over the river and into the woods",
    "你好，世界！😀",
    "a",
    "def fibonacci(n):\n    return",
    "Il était une fois",
    "Streaming tokens one by one",
    "x = [1, 2, 3]",
]


@pytest.fixture(scope="module")
def offline(server):
    """The same checkpoint run by the engine in-process: the reference for the served text."""
    return LLMEngine(EngineConfig(model_dir=str(server.model_dir), device="cpu", num_kv_blocks=256,
                                  max_model_len=1024))


def greedy(prompt: str, max_tokens: int = 24, **kw) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kw)


def test_grpc_stream_matches_offline_engine(server, offline):
    for prompt in PROMPTS[:4]:
        expected = offline.generate([prompt], SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))[0]
        chunks = list(stream_grpc(server.grpc_url, server.model, greedy(prompt, return_cumulative_logprob=True)))
        assert "".join(c.text for c in chunks) == expected.text
        assert sum(c.num_output_tokens for c in chunks) == 24
        assert chunks[-1].final and chunks[-1].finish_reason == "length"
        assert all(c.finish_reason is None for c in chunks[:-1])  # the wire says "None", as vLLM does
        assert chunks[-1].num_input_tokens == expected.num_input_tokens
        assert chunks[-1].cumulative_logprob == pytest.approx(expected.cumulative_logprob, rel=1e-4, abs=1e-4)
        assert len(chunks) >= 2, "tokens must arrive as they are generated, not in one piece"


def test_non_streaming_is_the_concatenated_stream(server):
    for prompt in PROMPTS[:3]:
        streamed = "".join(c.text for c in stream_grpc(server.grpc_url, server.model, greedy(prompt)))
        whole = generate_grpc(server.grpc_url, server.model, greedy(prompt, stream=False))
        assert whole.text == prompt + streamed          # prompt prepended by default
        assert whole.num_chunks == 1
        excluded = generate_grpc(server.grpc_url, server.model,
                                 greedy(prompt, stream=False, exclude_input_in_output=True))
        assert excluded.text == streamed
        http_whole = generate_http(server.http_url, server.model, greedy(prompt, stream=False))
        assert http_whole.text == prompt + streamed
        http_chunks = list(stream_http(server.http_url, server.model, greedy(prompt)))
        assert "".join(c.text for c in http_chunks) == streamed


def test_curl_style_generate_stream(server):
    """The README's curl example: plain JSON in, server-sent events out. An event carries every
    token that became ready since the last one (outputs that queue up are merged, engine/loop.py),
    so 8 tokens come as 1-8 events whose token counts add up to 8."""
    body = json.dumps({"text_input": "Once upon a time", "stream": True, "return_num_output_tokens": True,
                       "sampling_parameters": json.dumps({"max_tokens": "8", "temperature": "0",
                                                          "ignore_eos": True})}).encode()
    req = urllib.request.Request(f"http://{server.http_url}/v2/models/llm/generate_stream", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        events = [json.loads(line[len(b"data: "):]) for line in r.read().splitlines() if line.startswith(b"data: ")]
    assert 1 <= len(events) <= 8
    assert sum(e["num_output_tokens"] for e in events) == 8
    expected = "".join(c.text for c in stream_grpc(server.grpc_url, server.model, greedy("Once upon a time", 8)))
    assert "".join(e["text_output"] for e in events) == expected


def test_concurrent_streams_match_solo_runs(server):
    solo = {p: "".join(c.text for c in stream_grpc(server.grpc_url, server.model, greedy(p, 16)))
            for p in PROMPTS}

    results = greedy_streams(server, PROMPTS * 2, 16)
    assert len(results) == 16
    for prompt, text, n in results:
        assert text == solo[prompt]
        assert n == 16


def _raw_stream(server, inputs: dict[str, tuple[str, object]], timeout: float = 60):
    """Send tensors exactly as given over a gRPC stream; returns (responses, errors)."""
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    tensors = []
    for name, (dtype, value) in inputs.items():
        arr = np.array([value], dtype=np.object_ if dtype == "BYTES" else bool)
        t = grpcclient.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        tensors.append(t)
    client.async_stream_infer(server.model, tensors, enable_empty_final_response=True)
    responses, errors = [], []
    while True:
        result, error = results.get(timeout=timeout)
        if error is not None:
            errors.append(str(error))
            break
        responses.append(result)
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
    client.stop_stream()
    client.close()
    return responses, errors


BAD_REQUESTS = {
    "bad JSON": ({"text_input": ("BYTES", b"hi"), "sampling_parameters": ("BYTES", b"{max_tokens: 3")},
                 "sampling_parameters"),
    "negative max_tokens": ({"text_input": ("BYTES", b"hi"),
                             "sampling_parameters": ("BYTES", b'{"max_tokens": -5}')}, "max_tokens"),
    "unknown sampling key": ({"text_input": ("BYTES", b"hi"),
                              "sampling_parameters": ("BYTES", b'{"max_tokenz": 5}')}, "max_tokenz"),
    "empty prompt": ({"text_input": ("BYTES", b"")}, "text_input"),
    "non-UTF-8 prompt": ({"text_input": ("BYTES", b"\xff\xfe bad")}, "text_input"),
    "over-long prompt": ({"text_input": ("BYTES", ("word " * 3000).encode())}, "text_input"),
    "unknown model input": ({"text_input": ("BYTES", b"hi"), "prompt_typo": ("BYTES", b"x")}, "prompt_typo"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_clear_error_while_good_stream_completes(server, case):
    inputs, field = BAD_REQUESTS[case]
    good_prompt = PROMPTS[1]
    expected = "".join(c.text for c in stream_grpc(server.grpc_url, server.model, greedy(good_prompt, 48)))
    good: dict = {}

    def stream_good():
        chunks = list(stream_grpc(server.grpc_url, server.model, greedy(good_prompt, 48)))
        good["text"] = "".join(c.text for c in chunks)

    t = threading.Thread(target=stream_good)
    t.start()
    responses, errors = _raw_stream(server, inputs)
    t.join(120)
    assert not responses and len(errors) == 1, (responses, errors)
    assert field in errors[0], errors[0]
    assert good["text"] == expected
    with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=5) as r:
        assert r.status == 200


def test_http_errors_use_the_right_status(server):
    with pytest.raises(ClientError) as info:
        generate_http(server.http_url, server.model,
                      GenerateRequest(prompt="hi", stream=False, sampling={"temperature": -1}))
    assert info.value.http_status == 400 and "temperature" in info.value.message
    with pytest.raises(ClientError) as info:
        generate_http(server.http_url, server.model,
                      GenerateRequest(prompt="hi", stream=False, sampling={"max_tokens": 2000}))
    assert info.value.http_status == 400 and "max_tokens" in info.value.message


def test_numbers_as_strings_and_optional_outputs(server):
    """genai-perf sends {"max_tokens": "128"}; the optional outputs come only when asked for."""
    inputs = {"text_input": ("BYTES", b"Once upon a time"), "stream": ("BOOL", False),
              "sampling_parameters": ("BYTES", b'{"max_tokens": "5", "temperature": "0", "ignore_eos": "true"}'),
              "return_num_output_tokens": ("BOOL", True), "return_logprobs": ("BOOL", True)}
    responses, errors = _raw_stream(server, inputs)
    assert not errors and len(responses) == 1
    r = responses[0]
    assert r.as_numpy("num_output_tokens").tolist() == [5]
    logprobs = json.loads(r.as_numpy("logprobs")[0])
    assert len(logprobs) == 5 and all(len(entry) == 1 for entry in logprobs)
    assert all(v["logprob"] <= 0 for entry in logprobs for v in entry.values())
    assert r.as_numpy("finish_reason") is None
    assert r.as_numpy("cumulative_logprob") is None
    assert r.as_numpy("text_output")[0].decode().startswith("Once upon a time")


def test_a_burst_of_good_and_bad_requests_is_admitted_together(server):
    """Requests sent back to back reach the admission thread together and are submitted to the
    engine as one batch (model.py: _admit). The bad ones in that batch (bad sampling JSON, a
    max_tokens beyond the model's length) fail alone with an error naming the field; every good
    one streams its solo text; the request ids say which response is whose."""
    prompts = PROMPTS[:6]
    solo = {p: "".join(c.text for c in stream_grpc(server.grpc_url, server.model, greedy(p, 12))) for p in prompts}
    good_params = json.dumps({"max_tokens": 12, "temperature": 0, "ignore_eos": True}).encode()
    bad = {"bad-json": (b"{max_tokens", "sampling_parameters"),
           "too-long": (json.dumps({"max_tokens": 100_000}).encode(), "max_tokens")}
    sends = []   # (request id, prompt, sampling JSON)
    for i, prompt in enumerate(prompts):
        sends.append((f"good-{i}", prompt, good_params))
        if i in (1, 4):
            rid = sorted(bad)[i == 4]
            sends.append((rid, prompt, bad[rid][0]))
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for rid, prompt, params in sends:
            tensors = []
            for name, value in (("text_input", prompt.encode()), ("sampling_parameters", params), ("stream", True)):
                t = grpcclient.InferInput(name, [1], "BOOL" if name == "stream" else "BYTES")
                t.set_data_from_numpy(np.array([value], dtype=bool if name == "stream" else np.object_))
                tensors.append(t)
            client.async_stream_infer(server.model, tensors, request_id=rid)
        texts = {rid: "" for rid, _, _ in sends if rid.startswith("good")}
        errors: dict[str, str] = {}
        finished: set[str] = set()
        while len(finished) + len(errors) < len(sends):
            result, error = results.get(timeout=120)
            if error is not None:   # a failed request's final response (the stream's error has no id)
                named = [r for r, (_, field) in bad.items() if field in str(error)]
                assert len(named) == 1 and named[0] not in errors, str(error)
                errors[named[0]] = str(error)   # (a stream's error carries no status code)
                continue
            response = result.get_response()
            texts[response.id] += result.as_numpy("text_output")[0].decode()
            if response.parameters["triton_final_response"].bool_param:
                finished.add(response.id)
    finally:
        client.stop_stream()
        client.close()
    assert finished == set(texts)
    for i, prompt in enumerate(prompts):
        assert texts[f"good-{i}"] == solo[prompt]
    assert set(errors) == set(bad)   # each bad request failed once, naming its own field


def test_min_tokens_stop_strings_and_vllm_defaults_through_the_server(server, offline):
    """vLLM's semantics through the adapter: a stop string completed before min_tokens does not
    end generation; null stop lists and n=1 are accepted as the defaults."""
    prompt = PROMPTS[0]
    free = offline.generate([prompt], SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))[0].text
    stop = next(free[i:i + 2] for i in range(1, len(free) - 1) if free[i:i + 2].strip())   # early in the text
    params = {"max_tokens": 16, "temperature": 0, "ignore_eos": True, "stop": [stop], "min_tokens": 12,
              "stop_token_ids": None, "n": 1}
    expected = offline.generate([prompt], SamplingParams.from_dict(params))[0]
    without_min = offline.generate([prompt], SamplingParams(max_tokens=16, temperature=0, ignore_eos=True,
                                                            stop=[stop]))[0]
    assert len(expected.text) > len(without_min.text)   # min_tokens kept it going past the first stop
    inputs = {"text_input": ("BYTES", prompt.encode()), "stream": ("BOOL", False),
              "exclude_input_in_output": ("BOOL", True),
              "sampling_parameters": ("BYTES", json.dumps(params).encode())}
    responses, errors = _raw_stream(server, inputs)
    assert not errors and len(responses) == 1
    assert responses[0].as_numpy("text_output")[0].decode() == expected.text
