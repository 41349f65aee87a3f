"""Fuzz the real server: a few hundred seeded random requests (unicode prompts, valid and broken
sampling_parameters, random BOOL flags, missing/extra/mistyped/misshaped tensors, gRPC streaming and
not, HTTP generate and generate_stream), 16 at a time.

Every request must end, within a per-request timeout, with either a complete response (final flag)
or exactly one error; an error for a bad input must name the field (fuzz_cases.Oracle decides which
requests are bad and which field). Afterwards the server is still healthy: ready, the engine
healthy, the same stub process, no KV blocks held, no failed execute() or engine step in its log, and
a known greedy request returns its known text. The counts are printed (pytest -s) and asserted
(lost == 0).

The bugs this found are fixed: a lone surrogate in an unknown key's name made execute() raise
(model.py _error), and {"top_k": 1e30} with top_p < 1 killed the engine for everyone (now clamped in engine/sampler.py). Two more are fixed and tested below: a seed above 2**53 sent
as a string kept its exact value, and a temperature below ~1e-38 gave NaN probabilities (now
greedy below 1e-5, as vLLM).
"""
from __future__ import annotations

import http.client
import json
import queue
import random
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import tritonclient.grpc as grpcclient

from engine import EngineConfig, LLMEngine, SamplingParams
from perf.soak import reap, scrape_metrics, stop_timed, stub_pids, wait_until
from tests.conftest import start_server, stop_server, write_model_repository
from tests.reliability.fuzz_cases import Case, Oracle, make_case, pinned_cases

SEED = 20261123
N_CASES = 320
CONCURRENCY = 16
TIMEOUT_S = 60.0          # per request: a hang fails the test instead of blocking it
GRACE_S = 0.1             # after the end, listen this long for anything more (there must be nothing)
SERVER = dict(num_kv_blocks="24", max_num_seqs="16", max_model_len="512")   # 384 KV tokens < max_model_len
KNOWN_PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("fuzz")
    srv = start_server(tmp, write_model_repository(tmp, tiny_model_dir, **SERVER), tiny_model_dir)
    yield srv
    stop_server(srv)
    reap(srv.process)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return LLMEngine(EngineConfig(model_dir=str(tiny_model_dir), device="cpu",
                                  num_kv_blocks=int(SERVER["num_kv_blocks"]),
                                  max_model_len=int(SERVER["max_model_len"])))


def _escaped(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def run_grpc(url: str, case: Case) -> dict:
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    out = {"responses": [], "errors": [], "final": False, "lost": False, "after_end": 0}
    try:
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        tensors = []
        for name, dtype, arr in case.tensors:
            t = grpcclient.InferInput(name, list(arr.shape), dtype)
            t.set_data_from_numpy(arr)
            tensors.append(t)
        client.async_stream_infer("llm", tensors, request_id=f"fuzz-{case.idx}", enable_empty_final_response=True)
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                result, error = results.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                out["lost"] = True
                break
            if error is not None:
                out["errors"].append(str(error))
                break
            params = result.get_response().parameters
            final = "triton_final_response" in params and params["triton_final_response"].bool_param
            out["responses"].append({name: result.as_numpy(name) for name in (
                "text_output", "finish_reason", "num_output_tokens", "num_input_tokens", "logprobs",
                "cumulative_logprob")} | {"final": final})
            if final:
                out["final"] = True
                break
        if not out["lost"]:
            time.sleep(GRACE_S)
            out["after_end"] = results.qsize()
    finally:
        client.stop_stream(cancel_requests=not (out["final"] or out["errors"]))
        client.close()
    return out


def run_http(url: str, case: Case) -> dict:
    host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
    path = "generate_stream" if case.transport == "http_stream" else "generate"
    try:
        conn.request("POST", f"/v2/models/llm/{path}", body=case.body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        return {"status": resp.status, "body": body, "lost": False}
    except TimeoutError:
        return {"status": None, "body": b"", "lost": True}
    finally:
        conn.close()


def _s(arr):
    return None if arr is None else arr.reshape(-1)[0]


def check(case: Case, out: dict, engine) -> tuple[str, str | None]:
    """(class of the outcome, problem or None)."""
    if out.get("lost"):
        return "lost", f"no final response or error within {TIMEOUT_S}s"
    if case.transport == "grpc":
        if case.expect == "ok":
            if out["errors"]:
                return "fault", f"error for a valid request: {out['errors']}"
            if not out["final"] or out["after_end"]:
                return "fault", f"final={out['final']} responses after the end={out['after_end']}"
            rs = out["responses"]
            if not case.stream and len(rs) != 1:
                return "fault", f"{len(rs)} responses without streaming"
            if any(r["final"] for r in rs[:-1]):
                return "fault", "final flag before the last response"
            texts = [_s(r["text_output"]).decode("utf-8") for r in rs]
            if not case.stream and not case.flags.get("exclude_input_in_output"):
                prompt = next(a for n, _, a in case.tensors if n == "text_input").reshape(-1)[0].decode()
                if not texts[0].startswith(prompt):
                    return "fault", "the prompt is not prepended"
            if case.flags.get("return_num_output_tokens"):
                n = sum(int(_s(r["num_output_tokens"])) for r in rs)
                if not 1 <= n <= case.max_tokens:
                    return "fault", f"{n} output tokens, max_tokens {case.max_tokens}"
            if case.flags.get("return_finish_reason"):
                reasons = [_s(r["finish_reason"]).decode() for r in rs]
                if reasons[-1] not in ("stop", "length") or any(x != "None" for x in reasons[:-1]):
                    return "fault", f"finish reasons {reasons}"
            if case.flags.get("return_num_input_tokens"):
                prompt = next(a for n, _, a in case.tensors if n == "text_input").reshape(-1)[0].decode()
                if int(_s(rs[-1]["num_input_tokens"])) != len(engine.tokenize(prompt)):
                    return "fault", "num_input_tokens differs from the tokenizer's count"
            if case.flags.get("return_logprobs"):
                for r in rs:
                    if not isinstance(json.loads(_s(r["logprobs"])), list):
                        return "fault", "logprobs is not a JSON list"
            return "ok", None
        if out["responses"] or len(out["errors"]) != 1 or out["after_end"]:
            return "fault", f"want exactly one error: responses={len(out['responses'])} errors={out['errors']} " \
                            f"after the end={out['after_end']}"
        msg = out["errors"][0]
        if _escaped(case.field) not in msg:
            return "fault", f"the error does not name {case.field!r}: {msg[:300]}"
        return ("invalid_arg(grpc)" if case.expect == "invalid" else "triton_rejected(grpc)"), None
    # HTTP
    status, body = out["status"], out["body"]
    if case.expect == "ok":
        if status != 200:
            return "fault", f"HTTP {status} for a valid request: {body[:300]!r}"
        if case.transport == "http":
            obj = json.loads(body)
            if "error" in obj or "text_output" not in obj:
                return "fault", f"bad generate answer {body[:300]!r}"
        else:
            events = [json.loads(line[5:]) for line in body.splitlines() if line.startswith(b"data:")]
            if not events or any("error" in e or "text_output" not in e for e in events):
                return "fault", f"bad generate_stream answer {body[:300]!r}"
            if not case.stream and len(events) != 1:
                return "fault", f"{len(events)} events without streaming"
        return "ok", None
    if case.expect == "invalid":
        text = body.decode("utf-8", "replace")
        if status != 400 or _escaped(case.field) not in text or text.count('"error"') != 1:
            return "fault", f"want one HTTP 400 naming {case.field!r}, got {status} {body[:300]!r}"
        return "invalid_arg(http 400)", None
    if status is None or status < 400 or b"error" not in body:
        return "fault", f"want an error from Triton's front end, got {status} {body[:300]!r}"
    return f"triton_rejected(http {status})", None


def test_fuzz_requests_end_cleanly_and_the_server_survives(fuzz_server, engine):
    srv = fuzz_server
    vocab = engine.model_config.vocab_size
    rng = random.Random(SEED)
    oracle = Oracle(engine)
    cases = [make_case(i, rng, oracle, vocab) for i in range(N_CASES)]
    cases += pinned_cases(len(cases), oracle)
    known = engine.generate([KNOWN_PROMPT], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))[0].text
    stubs = stub_pids(srv.process.pid)
    assert stubs

    def run(case):
        url = srv.grpc_url if case.transport == "grpc" else srv.http_url
        out = run_grpc(url, case) if case.transport == "grpc" else run_http(url, case)
        return case, out, check(case, out, engine)

    t0 = time.monotonic()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(run, cases))
    elapsed = time.monotonic() - t0

    classes = Counter(cls for _, _, (cls, _) in results)
    labels = Counter(case.label for case in cases)
    problems = [(case.idx, case.label, case.transport, case.expect, case.field, problem)
                for case, _, (cls, problem) in results if problem]
    summary = {"requests_tried": len(cases), "elapsed_s": round(elapsed, 1), "outcomes": dict(classes),
               "expected": dict(Counter(c.expect for c in cases)),
               "transports": dict(Counter(c.transport for c in cases)),
               "lost": classes.get("lost", 0), "faults": classes.get("fault", 0), "categories": dict(labels)}
    print("\nfuzz summary:", json.dumps(summary, indent=1, ensure_ascii=False))
    assert not problems, "\n".join(map(repr, problems[:25]))
    assert classes.get("lost", 0) == 0
    assert classes["ok"] > N_CASES // 4 and classes["invalid_arg(grpc)"] > 30   # the mix is sane

    # The server is still up and well.
    with urllib.request.urlopen(f"http://{srv.http_url}/v2/health/ready", timeout=5) as r:
        assert r.status == 200
    client_req = {"text_input": KNOWN_PROMPT, "sampling_parameters": json.dumps(
        {"max_tokens": 12, "temperature": 0, "ignore_eos": True}), "exclude_input_in_output": True}
    req = urllib.request.Request(f"http://{srv.http_url}/v2/models/llm/generate",
                                 data=json.dumps(client_req).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert json.loads(r.read())["text_output"] == known
    metrics = wait_until(lambda: (s := scrape_metrics(srv.metrics_url)) and s["llm_kv_cache_blocks_used"] == 0 and s,
                         20.0)
    assert metrics, "KV blocks still held after every request ended"
    assert metrics["llm_engine_healthy"] == 1 and metrics["vllm:num_requests_running"] == 0
    assert stub_pids(srv.process.pid) == stubs, "the model's stub process was replaced"
    log = srv.log()
    for sign in ("Failed to process the request", "engine step failed", "Traceback"):
        assert sign not in log, f"{sign!r} in the server log:\n{log[log.find(sign) - 200:][:3000]}"


def _stream_text(srv, params: dict) -> str:
    from client import GenerateRequest, stream_grpc
    return "".join(c.text for c in stream_grpc(srv.grpc_url, "llm", GenerateRequest("Seeds", sampling=params),
                                               timeout=60))


def test_seed_sent_as_string_is_the_same_seed(fuzz_server):
    seed = 2**53 + 1
    base = {"max_tokens": 12, "temperature": 1.0, "ignore_eos": True}
    assert _stream_text(fuzz_server, {**base, "seed": str(seed)}) == _stream_text(fuzz_server, {**base, "seed": seed})


def test_tiny_temperature_is_greedy_not_nan(fuzz_server):
    base = {"max_tokens": 12, "ignore_eos": True}
    assert _stream_text(fuzz_server, {**base, "temperature": 1e-39}) == _stream_text(fuzz_server, {**base, "temperature": 0})


def test_the_server_stops_cleanly_after_the_fuzz(fuzz_server):
    """Last in this module. Before the _error fix, requests whose execute() raised left the model
    impossible to unload: SIGTERM then waited out the whole exit timeout and exited 1."""
    rc, seconds = stop_timed(fuzz_server.process)
    assert rc == 0 and seconds < 15, (rc, seconds, fuzz_server.log()[-2000:])
