"""End-to-end tests of the client against a real tritonserver.

They use the `server` fixture from tests/conftest.py (attributes http_url,
grpc_url, model) and skip cleanly while that fixture does not exist."""

import asyncio
import os
import subprocess
import sys
import time

import pytest

from client import (AsyncGrpcClient, ClientError, GenerateRequest, Result, generate_grpc, generate_http,
                    stream_grpc, stream_http)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPT = "The capital of France is"
MAX_TOKENS = 16
# ignore_eos makes the model hit max_tokens, so lengths and finish_reason are known.
GREEDY = dict(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
SEEDED = dict(max_tokens=MAX_TOKENS, temperature=0.8, top_p=0.95, seed=1234, ignore_eos=True)
TIMEOUT = 120.0


@pytest.fixture
def srv(request):
    try:
        return request.getfixturevalue("server")
    except pytest.FixtureLookupError:
        pytest.skip("no `server` fixture (tests/conftest.py) yet")


def grpc_stream(srv, **kw):
    t_start = time.perf_counter()
    chunks = list(stream_grpc(srv.grpc_url, srv.model, GenerateRequest(PROMPT, **kw), timeout=TIMEOUT))
    return chunks, Result.from_chunks(chunks, t_start)


@pytest.fixture
def greedy_ref(srv):
    """Non-streamed greedy reference over gRPC, prompt excluded."""
    r = generate_grpc(srv.grpc_url, srv.model, GenerateRequest(PROMPT, exclude_input_in_output=True, **GREEDY),
                      timeout=TIMEOUT)
    assert r.text and r.num_chunks == 1
    assert r.num_output_tokens == MAX_TOKENS
    assert r.finish_reason == "length"
    assert r.num_input_tokens and r.num_input_tokens > 0
    return r


def test_grpc_stream_matches_non_stream(srv, greedy_ref):
    chunks, r = grpc_stream(srv, **GREEDY)
    assert len(chunks) > 1, "expected more than one streamed response"
    assert r.text == greedy_ref.text
    assert r.num_output_tokens == MAX_TOKENS
    assert all(c.num_output_tokens is not None for c in chunks)
    assert r.finish_reason == "length"
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert r.num_input_tokens == greedy_ref.num_input_tokens
    assert 0 < r.ttft_s <= r.total_s


def test_grpc_non_stream_prepends_prompt(srv, greedy_ref):
    r = generate_grpc(srv.grpc_url, srv.model, GenerateRequest(PROMPT, **GREEDY), timeout=TIMEOUT)
    assert r.text == PROMPT + greedy_ref.text
    assert r.num_output_tokens == MAX_TOKENS
    assert r.finish_reason == "length"


def test_http_generate(srv, greedy_ref):
    r = generate_http(srv.http_url, srv.model, GenerateRequest(PROMPT, exclude_input_in_output=True, **GREEDY),
                      timeout=TIMEOUT)
    assert (r.text, r.num_output_tokens, r.finish_reason, r.num_input_tokens) == \
        (greedy_ref.text, MAX_TOKENS, "length", greedy_ref.num_input_tokens)
    r = generate_http(srv.http_url, srv.model, GenerateRequest(PROMPT, **GREEDY), timeout=TIMEOUT)
    assert r.text == PROMPT + greedy_ref.text


def test_http_generate_stream(srv, greedy_ref):
    chunks = list(stream_http(srv.http_url, srv.model, GenerateRequest(PROMPT, **GREEDY), timeout=TIMEOUT))
    assert len(chunks) > 1
    assert "".join(c.text for c in chunks) == greedy_ref.text
    assert sum(c.num_output_tokens for c in chunks) == MAX_TOKENS
    assert chunks[-1].finish_reason == "length"


def test_seeded_sampling_is_reproducible(srv):
    _, streamed = grpc_stream(srv, **SEEDED)
    req = GenerateRequest(PROMPT, exclude_input_in_output=True, **SEEDED)
    via_grpc = generate_grpc(srv.grpc_url, srv.model, req, timeout=TIMEOUT)
    via_http = generate_http(srv.http_url, srv.model, req, timeout=TIMEOUT)
    assert streamed.text == via_grpc.text == via_http.text
    assert streamed.num_output_tokens == via_grpc.num_output_tokens == MAX_TOKENS


def test_cumulative_logprob_and_logprobs(srv):
    kw = dict(GREEDY, return_cumulative_logprob=True, return_logprobs=True, sampling={"logprobs": 1})
    chunks, streamed = grpc_stream(srv, **kw)
    whole = generate_grpc(srv.grpc_url, srv.model, GenerateRequest(PROMPT, **kw), timeout=TIMEOUT)
    assert streamed.cumulative_logprob is not None and streamed.cumulative_logprob <= 0
    assert streamed.cumulative_logprob == pytest.approx(whole.cumulative_logprob, abs=1e-2)
    # One logprobs entry per generated token, whichever way it was delivered.
    assert len(streamed.logprobs) == len(whole.logprobs) == MAX_TOKENS


def test_stop_string(srv, greedy_ref):
    # Take a word the greedy run produced mid-way; the output must end just before it.
    words = greedy_ref.text.split()
    stop = next((w for w in words[len(words) // 2:] if w.strip()), None)
    if not stop:
        pytest.skip(f"greedy output has no usable stop word: {greedy_ref.text!r}")
    expected = greedy_ref.text[:greedy_ref.text.index(stop)]
    req = GenerateRequest(PROMPT, exclude_input_in_output=True, stop=[stop], **GREEDY)
    for r in (generate_grpc(srv.grpc_url, srv.model, req, timeout=TIMEOUT),
              generate_http(srv.http_url, srv.model, req, timeout=TIMEOUT)):
        assert (r.text, r.finish_reason) == (expected, "stop")
        assert r.num_output_tokens < MAX_TOKENS
    # Streaming may already have sent part of a multi-token stop string.
    _, streamed = grpc_stream(srv, stop=[stop], **GREEDY)
    assert streamed.finish_reason == "stop"
    assert streamed.text.startswith(expected)


def test_async_concurrent_streams(srv, greedy_ref):
    async def run():
        async with AsyncGrpcClient(srv.grpc_url) as client:
            async def one():
                return "".join([c.text async for c in client.stream(srv.model, GenerateRequest(PROMPT, **GREEDY),
                                                                     timeout=TIMEOUT)])
            return await asyncio.gather(*[one() for _ in range(16)])

    # Batched greedy requests must all give the unbatched answer.
    assert asyncio.run(run()) == [greedy_ref.text] * 16


def test_abandoned_stream_does_not_break_server(srv, greedy_ref):
    it = stream_grpc(srv.grpc_url, srv.model, GenerateRequest(PROMPT, max_tokens=512, ignore_eos=True),
                     timeout=TIMEOUT)
    next(it)
    it.close()  # cancels the request
    r = generate_grpc(srv.grpc_url, srv.model, GenerateRequest(PROMPT, exclude_input_in_output=True, **GREEDY),
                      timeout=TIMEOUT)
    assert r.text == greedy_ref.text


BAD = GenerateRequest(PROMPT, sampling={"max_tokens": -1})


@pytest.mark.parametrize("call", ["grpc_stream", "grpc_generate", "http_generate", "http_stream"])
def test_server_error_surfaces(srv, call):
    with pytest.raises(ClientError) as info:
        if call == "grpc_stream":
            list(stream_grpc(srv.grpc_url, srv.model, BAD, timeout=TIMEOUT))
        elif call == "grpc_generate":
            generate_grpc(srv.grpc_url, srv.model, BAD, timeout=TIMEOUT)
        elif call == "http_generate":
            generate_http(srv.http_url, srv.model, BAD, timeout=TIMEOUT)
        else:
            list(stream_http(srv.http_url, srv.model, BAD, timeout=TIMEOUT))
    assert "max_tokens" in info.value.message
    assert info.value.code == "INVALID_ARGUMENT"   # the same over both transports
    if call.startswith("http"):
        assert 400 <= info.value.http_status < 500


def test_unknown_model(srv):
    with pytest.raises(ClientError, match="unknown model") as info:
        generate_grpc(srv.grpc_url, "no_such_model", GenerateRequest(PROMPT), timeout=TIMEOUT)
    assert info.value.code == "NOT_FOUND"
    with pytest.raises(ClientError) as info:
        generate_http(srv.http_url, "no_such_model", GenerateRequest(PROMPT), timeout=TIMEOUT)
    assert info.value.code == "NOT_FOUND"


@pytest.mark.parametrize("bad", ["unknown_input", "wrong_datatype", "wrong_shape"])
def test_triton_refusal_of_a_tensor_reads_invalid_argument(srv, bad):
    """Triton refuses these before the model sees them; over gRPC its message arrives as bare
    text in the stream, which the client reads as INVALID_ARGUMENT (HTTP says 400)."""
    import queue

    import numpy as np
    import tritonclient.grpc as grpcclient

    from client.grpc_api import error_from_grpc

    def tensor(name, dtype, value, shape=(1,)):
        t = grpcclient.InferInput(name, list(shape), dtype)
        t.set_data_from_numpy(np.array(value, dtype=np.object_ if dtype == "BYTES" else None).reshape(shape))
        return t

    inputs = {"unknown_input": [tensor("text_input", "BYTES", [b"hi"]), tensor("no_such_input", "BYTES", [b"x"])],
              "wrong_datatype": [tensor("text_input", "BYTES", [b"hi"]), tensor("stream", "INT32", np.array([1], np.int32))],
              "wrong_shape": [tensor("text_input", "BYTES", [b"a", b"b"], shape=(2,))]}[bad]
    results = queue.Queue()
    client = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        client.start_stream(callback=lambda result, error: results.put(error))
        client.async_stream_infer(srv.model, inputs, enable_empty_final_response=True)
        error = results.get(timeout=TIMEOUT)
    finally:
        client.stop_stream()
        client.close()
    e = error_from_grpc(error)
    assert e.code == "INVALID_ARGUMENT", e


def cli(*args):
    return subprocess.run([sys.executable, "-m", "client", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=TIMEOUT, env={**os.environ, "PYTHONPATH": REPO})


GREEDY_ARGS = ["--max-tokens", str(MAX_TOKENS), "--temperature", "0", "--ignore-eos"]


@pytest.mark.parametrize("transport", [[], ["--no-stream", "--exclude-input"], ["--http"],
                                       ["--http", "--no-stream", "--exclude-input"]])
def test_cli(srv, greedy_ref, transport):
    p = cli(PROMPT, "--url", srv.grpc_url, "--http-url", srv.http_url, "--model", srv.model,
            *GREEDY_ARGS, *transport)
    assert p.returncode == 0, p.stderr
    assert p.stdout == greedy_ref.text + "\n"
    assert f"tokens={MAX_TOKENS}" in p.stderr and "finish=length" in p.stderr and "ttft=" in p.stderr


def test_cli_error(srv):
    p = cli(PROMPT, "--url", srv.grpc_url, "--model", srv.model, "--max-tokens", "-1")
    assert p.returncode == 1
    assert "max_tokens" in p.stderr


# ---- abandoning a request cancels it on the server (its cancelled-requests metric)

CANCELLED = 'vllm:request_success_total{finished_reason="cancelled"}'
LONG = dict(max_tokens=900, ignore_eos=True)   # ~1.5 s on the CPU test server: still running when we stop


def cancelled_count(srv) -> float:
    import urllib.request
    with urllib.request.urlopen(f"http://{srv.metrics_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total{") and 'finished_reason="cancelled"' in line)


def wait_cancelled(srv, before, timeout=20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cancelled_count(srv) > before:
            return True
        time.sleep(0.1)
    return False


def test_grpc_stream_closed_early_cancels_the_request(srv):
    before = cancelled_count(srv)
    with stream_grpc(srv.grpc_url, srv.model, GenerateRequest(PROMPT, **LONG), timeout=TIMEOUT) as chunks:
        assert next(chunks).text is not None
    assert list(chunks) == []   # closed: nothing more
    assert wait_cancelled(srv, before)


def test_grpc_streams_closed_early_leave_no_thread_behind(srv):
    """Each cancelled stream used to leave gRPC's request-feeding thread waiting forever (one
    thread and its memory per early exit, in a long-lived client)."""
    import threading

    def early_exit():
        with stream_grpc(srv.grpc_url, srv.model, GenerateRequest(PROMPT, **LONG), timeout=TIMEOUT) as chunks:
            next(chunks)

    early_exit()   # threads that live as long as the process (gRPC's own) start here
    time.sleep(0.5)
    base = threading.active_count()
    for _ in range(5):
        early_exit()
    deadline = time.monotonic() + 10
    while threading.active_count() > base and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threading.active_count() <= base, [t.name for t in threading.enumerate()]


def test_grpc_stream_closed_from_another_thread(srv):
    import threading
    before = cancelled_count(srv)
    chunks = stream_grpc(srv.grpc_url, srv.model, GenerateRequest(PROMPT, **LONG), timeout=TIMEOUT)
    next(chunks)
    threading.Timer(0.2, chunks.close).start()
    t = time.monotonic()
    rest = list(chunks)   # ends when closed, long before 900 tokens
    assert time.monotonic() - t < 5 and sum(c.num_output_tokens for c in rest) < 899
    assert wait_cancelled(srv, before)


def test_http_stream_timeout_cancels_the_request(srv):
    before = cancelled_count(srv)
    t = time.monotonic()
    with pytest.raises(ClientError) as info:
        list(stream_http(srv.http_url, srv.model, GenerateRequest(PROMPT, **LONG), timeout=0.5))
    assert info.value.code == "DEADLINE_EXCEEDED" and time.monotonic() - t < 2.0
    assert wait_cancelled(srv, before)


def test_http_generate_timeout_is_prompt(srv):
    # Non-streaming over HTTP: the client gives up on time. (Triton 2.51 notices the disconnect only
    # when it writes, so this request is not cancelled on the server: see generate_http.)
    t = time.monotonic()
    with pytest.raises(ClientError) as info:
        generate_http(srv.http_url, srv.model, GenerateRequest(PROMPT, **LONG), timeout=0.5)
    assert info.value.code == "DEADLINE_EXCEEDED" and time.monotonic() - t < 2.0


@pytest.mark.parametrize("transport", [[], ["--http"]])
def test_cli_piped_into_early_exit_stops_and_cancels(srv, transport):
    """`python -m client ... | head -c 5`: the CLI must exit at once (not wait out --timeout with
    tritonclient's stream thread alive), quietly, and cancel the request."""
    before = cancelled_count(srv)
    p = subprocess.Popen([sys.executable, "-m", "client", PROMPT, "--url", srv.grpc_url, "--http-url", srv.http_url,
                          "--model", srv.model, "--max-tokens", "900", "--ignore-eos", *transport],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert len(os.read(p.stdout.fileno(), 5)) > 0
    p.stdout.close()   # the reader goes away, as `head -c 5` does
    try:
        rc = p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError("the CLI kept running after its stdout closed")
    err = p.stderr.read().decode()
    p.stderr.close()
    assert rc == 141 and "Traceback" not in err, err
    assert wait_cancelled(srv, before)
