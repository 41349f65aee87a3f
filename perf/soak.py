"""Soak test through the real tritonserver: many concurrent streams for a while, with client
cancellations and bad requests mixed in, and checks that nothing is lost, wrong or leaking.

    python -m perf.soak --duration 600 --concurrency 16 --out perf/results/soak-cpu.json
    python -m perf.soak --grpc-url 127.0.0.1:8001 --http-url 127.0.0.1:8000 \
        --metrics-url 127.0.0.1:8002 --model-dir models/default --duration 300   # a running server

Without --grpc-url it builds the seeded tiny checkpoint, starts its own server (tests/conftest.py's
launcher: free ports, KIND_CPU or KIND_GPU instance, a small KV cache so that preemption happens)
and stops it at the end. Each worker loops until --duration or --max-requests, picking per request:

  good       gRPC stream, greedy: the text must equal the solo text of the same (prompt, max_tokens),
             computed up front by an in-process LLMEngine on the same checkpoint
  seeded     gRPC stream, temperature/top_p with a seed: must equal the in-process seeded text
  nonstream  gRPC, stream=false, exclude_input_in_output: one response, the solo text
  http       HTTP generate_stream: the solo text
  cancel     gRPC stream; after k responses the client calls stop_stream(cancel_requests=True);
             what arrived must be a prefix of the solo text
  abandon    iterates client.stream_grpc and stops after k chunks (the iterator closes the stream
             and cancels the request); a prefix of the solo text
  http_drop  HTTP generate_stream, connection closed after k events
  bad        a request with one bad input: exactly one error that names the field

Figures (JSON): requests tried / completed / cancelled / bad / faults / lost, tokens, throughput,
latency percentiles, server-side cancelled/preempted counts, KV blocks after the run (must return to
0) and the RSS of the model's stub process (triton_python_backend_stub, a child of tritonserver)
after warm-up and at the end (must stay within rss_tolerance_frac + rss_tolerance_mb). `faults`
are requests whose outcome was wrong (an error on a good request, a different text, no error on a
bad one); `lost` are requests that got neither a final response nor an error within
request_timeout_s. `ok` in the JSON is true when faults == lost == 0 and both leak checks pass.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import random
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402

from client import ClientError, GenerateRequest, stream_grpc  # noqa: E402
from client.grpc_api import build_grpc_inputs  # noqa: E402

MODEL = "llm"
WORDS = ("the quick brown fox jumps over a lazy dog while servers stream tokens one by one and "
         "every request gets its own text back exactly as it would alone").split()
EXTRA = ["你好", "世界", "😀", "🚀", "Größe", "Привет", "안녕", "été", "x = [1, 2]", "\n", "def f():"]


# ----- server-side observations --------------------------------------------------------------------

def scrape_metrics(metrics_url: str, model: str = MODEL) -> dict[str, float]:
    """Our model's samples by name + labels (model/version/instance labels dropped, values of the
    same key summed: with several instances, gauges add up)."""
    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or f'model="{model}"' not in line:
            continue
        m = re.match(r'^([^{\s]+)\{([^}]*)\}\s+(\S+)$', line)
        if not m:
            continue
        labels = ",".join(l for l in m.group(2).split(",")
                          if not l.startswith(("model=", "version=", "instance=")))
        key = m.group(1) + (f"{{{labels}}}" if labels else "")
        samples[key] = samples.get(key, 0.0) + float(m.group(3))
    return samples


def child_pids(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def stub_pids(server_pid: int) -> list[int]:
    """The Python backend's stub processes (one per model instance) of a tritonserver process."""
    out = []
    for kid in child_pids(server_pid):
        try:
            cmd = Path(f"/proc/{kid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"triton_python_backend_stub" in cmd:
            out.append(kid)
    return sorted(out)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for {pid}")


def stop_timed(process, timeout: float = 60.0) -> tuple[int | None, float]:
    """SIGTERM tritonserver; (exit code or None if still running after `timeout`, seconds taken).
    An idle server stops in a few seconds; one that cannot unload the model waits out
    --exit-timeout-secs (30 s) and exits 1, or crashes."""
    import subprocess
    t0 = time.monotonic()
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - t0
    return process.returncode, round(time.monotonic() - t0, 1)


def reap(process) -> None:
    """SIGKILL whatever is left of a server started in its own session (tests/conftest.py
    start_server): tritonserver if still running, and a stub process a crashed server orphaned."""
    import signal
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.wait(30)


def wait_until(predicate, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return value


# ----- one request ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    kind: str                       # what was asked (good, cancel, bad, ...)
    text: str = ""
    tokens: int = 0
    responses: int = 0
    final: bool = False             # a response with the final flag arrived
    error: str | None = None        # the one error, if any
    errors: int = 0
    lost: bool = False              # neither final nor error within the timeout
    cancelled_by_client: bool = False
    latency_s: float = 0.0
    ttft_s: float | None = None
    detail: str = ""


def grpc_stream(url: str, tensors, timeout: float, stop_after: int | None = None,
                grace_s: float = 0.0) -> Outcome:
    """Send one request over its own gRPC stream and collect everything. stop_after=k: after k
    responses call stop_stream(cancel_requests=True). grace_s: after the end, keep listening that
    long to catch (and count) anything sent after the final response or the error."""
    out = Outcome("raw")
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    t0 = time.monotonic()
    stopped = False
    try:
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        client.async_stream_infer(MODEL, tensors, enable_empty_final_response=True)
        while True:
            try:
                result, error = results.get(timeout=max(0.0, t0 + timeout - time.monotonic()))
            except queue.Empty:
                out.lost = True
                break
            if error is not None:
                out.errors += 1
                out.error = str(error)
                break
            out.responses += 1
            text = result.as_numpy("text_output")
            if text is not None and text.size:
                out.text += text.reshape(-1)[0].decode("utf-8")
                if out.ttft_s is None:
                    out.ttft_s = time.monotonic() - t0
            n = result.as_numpy("num_output_tokens")
            if n is not None:
                out.tokens += int(n.reshape(-1)[0])
            params = result.get_response().parameters
            if "triton_final_response" in params and params["triton_final_response"].bool_param:
                out.final = True
                break
            if stop_after is not None and out.responses >= stop_after:
                client.stop_stream(cancel_requests=True)
                stopped = out.cancelled_by_client = True
                break
        out.latency_s = time.monotonic() - t0
        if grace_s and not stopped and not out.lost:
            time.sleep(grace_s)
            while not results.empty():
                result, error = results.get_nowait()
                if error is not None:
                    out.errors += 1
                else:
                    out.responses += 1
                    out.detail += " response after the end;"
    finally:
        if not stopped:
            client.stop_stream(cancel_requests=not (out.final or out.error))
        client.close()
    return out


def tensors_for(prompt: str, params: dict, stream: bool = True, **flags) -> list:
    req = GenerateRequest(prompt, stream=stream, sampling=params, return_finish_reason=False,
                          return_num_input_tokens=False, return_num_output_tokens=True, **flags)
    return build_grpc_inputs(req)


def raw_tensor(name: str, dtype: str, values) -> grpcclient.InferInput:
    arr = values if isinstance(values, np.ndarray) else np.array(
        values, dtype=np.object_ if dtype == "BYTES" else None)
    t = grpcclient.InferInput(name, list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


def http_stream(url: str, prompt: str, params: dict, timeout: float, drop_after: int | None = None) -> Outcome:
    import http.client
    out = Outcome("http")
    body = json.dumps({"text_input": prompt, "stream": True, "sampling_parameters": json.dumps(params),
                       "return_num_output_tokens": True}).encode()
    host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    t0 = time.monotonic()
    try:
        conn.request("POST", f"/v2/models/{MODEL}/generate_stream", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            out.errors, out.error = 1, f"HTTP {resp.status}: {resp.read()[:500]!r}"
            return out
        buf = b""
        while True:
            raw = resp.read1(65536)
            if not raw:
                break
            buf += raw
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                for line in event.splitlines():
                    if not line.startswith(b"data:"):
                        continue
                    obj = json.loads(line[5:])
                    if "error" in obj:
                        out.errors += 1
                        out.error = str(obj["error"])
                        continue
                    out.responses += 1
                    out.text += obj.get("text_output", "")
                    out.tokens += int(obj.get("num_output_tokens", 0))
                    if out.ttft_s is None:
                        out.ttft_s = time.monotonic() - t0
            if drop_after is not None and out.responses >= drop_after:
                out.cancelled_by_client = True
                break
        # SSE has no final flag: a clean end of the body after the last event is the end.
        out.final = not out.cancelled_by_client and out.errors == 0
    except TimeoutError:
        out.lost = True
    except OSError as e:
        out.errors, out.error = out.errors + 1, f"connection: {e!r}"
    finally:
        out.latency_s = time.monotonic() - t0
        conn.close()
    return out


# ----- the workload --------------------------------------------------------------------------------

BAD_REQUESTS = [  # (tensors factory, the field the error must name)
    (lambda: [raw_tensor("text_input", "BYTES", [b"hi"]),
              raw_tensor("sampling_parameters", "BYTES", [b'{"max_tokens": -3}'])], "max_tokens"),
    (lambda: [raw_tensor("text_input", "BYTES", [b"hi"]),
              raw_tensor("sampling_parameters", "BYTES", [b'{"temperature": "hot"}'])], "temperature"),
    (lambda: [raw_tensor("text_input", "BYTES", [b"hi"]),
              raw_tensor("sampling_parameters", "BYTES", [b'{"max_tokens": 4'])], "sampling_parameters"),
    (lambda: [raw_tensor("text_input", "BYTES", [b"hi"]),
              raw_tensor("sampling_parameters", "BYTES", [b'{"bogus_key": 1}'])], "bogus_key"),
    (lambda: [raw_tensor("text_input", "BYTES", [b""])], "text_input"),
    (lambda: [raw_tensor("text_input", "BYTES", [b"\xc3\x28 invalid"])], "text_input"),
    (lambda: [raw_tensor("text_input", "BYTES", [b"a", b"b"])], "text_input"),
    (lambda: [raw_tensor("text_input", "BYTES", [b"hi"]),
              raw_tensor("stream", "BYTES", [b"true"])], "stream"),
    (lambda: [raw_tensor("text_input", "BYTES", [b"hi"]),
              raw_tensor("sampling_parameters", "BYTES", [b'{"max_tokens": 100000}'])], "max_tokens"),
]


@dataclasses.dataclass
class SoakConfig:
    duration_s: float = 60.0
    max_requests: int = 100_000
    warmup_requests: int = 30          # not counted for the RSS baseline; RSS is read after them
    concurrency: int = 8
    seed: int = 0
    num_prompts: int = 16
    max_prompt_words: int = 120
    output_lengths: tuple[int, ...] = (1, 2, 5, 9, 16, 33, 64)  # the longest: also cancelled requests
    mix: dict = dataclasses.field(default_factory=lambda: {
        "good": 40, "seeded": 8, "nonstream": 8, "http": 6, "cancel": 12, "abandon": 10,
        "http_drop": 4, "bad": 12})
    request_timeout_s: float = 120.0
    rss_tolerance_frac: float = 0.15
    rss_tolerance_mb: float = 50.0
    rss_sample_s: float = 2.0


def make_prompts(rng: random.Random, n: int, max_words: int) -> list[str]:
    prompts = []
    for i in range(n):
        k = rng.choice([1, 2, 3, 5, 8, 13, 21, 34, 55, 89, max_words])
        words = [rng.choice(WORDS) if rng.random() > 0.15 else rng.choice(EXTRA) for _ in range(k)]
        prompts.append(f"[{i}] " + " ".join(words))
    return prompts


def reference_texts(model_dir: str, prompts: list[str], lengths, seeded_params: dict,
                    engine_kwargs: dict) -> tuple[dict, dict]:
    """Solo texts: each (prompt, max_tokens) generated alone by an in-process engine."""
    from engine import EngineConfig, LLMEngine, SamplingParams
    eng = LLMEngine(EngineConfig(model_dir=str(model_dir), device="cpu", **engine_kwargs))
    greedy, seeded = {}, {}
    for p in prompts:
        for m in lengths:
            greedy[(p, m)] = eng.generate([p], SamplingParams(max_tokens=m, temperature=0, ignore_eos=True))[0].text
        m = max(lengths)
        seeded[(p, m)] = eng.generate([p], SamplingParams.from_dict({**seeded_params, "max_tokens": m}))[0].text
    return greedy, seeded


SEEDED = {"temperature": 0.8, "top_p": 0.9, "top_k": 50, "seed": 1234, "ignore_eos": True}


def run_soak(grpc_url: str, http_url: str, metrics_url: str, server_pid: int, model_dir: str,
             cfg: SoakConfig, engine_kwargs: dict | None = None, log=print) -> dict:
    rng = random.Random(cfg.seed)
    prompts = make_prompts(rng, cfg.num_prompts, cfg.max_prompt_words)
    t_ref = time.monotonic()
    solo, seeded = reference_texts(model_dir, prompts, cfg.output_lengths, SEEDED, engine_kwargs or {})
    log(f"soak: {len(solo) + len(seeded)} reference texts in {time.monotonic() - t_ref:.1f}s")

    stubs = stub_pids(server_pid)
    if not stubs:
        raise RuntimeError(f"no triton_python_backend_stub child of tritonserver pid {server_pid}")
    before = scrape_metrics(metrics_url)

    lock = threading.Lock()
    counters = {"next": 0, "done": 0}
    outcomes: list[Outcome] = []
    faults: list[str] = []
    rss_timeline: list[tuple[float, float]] = []
    warm = threading.Event()
    stop = threading.Event()
    t_start = time.monotonic()
    deadline = t_start + cfg.duration_s
    kinds, weights = zip(*cfg.mix.items())

    def fault(msg: str) -> None:
        with lock:
            faults.append(msg)

    def one(i: int, r: random.Random) -> Outcome:
        kind = r.choices(kinds, weights)[0] if i >= cfg.warmup_requests else r.choice(["good", "cancel", "bad"])
        p = r.choice(prompts)
        m = r.choice(cfg.output_lengths)
        greedy = {"max_tokens": m, "temperature": 0, "ignore_eos": True}
        if kind == "good":
            o = grpc_stream(grpc_url, tensors_for(p, greedy), cfg.request_timeout_s)
            expect = solo[(p, m)]
        elif kind == "seeded":
            m = max(cfg.output_lengths)
            o = grpc_stream(grpc_url, tensors_for(p, {**SEEDED, "max_tokens": m}), cfg.request_timeout_s)
            expect = seeded[(p, m)]
        elif kind == "nonstream":
            o = grpc_stream(grpc_url, tensors_for(p, greedy, stream=False, exclude_input_in_output=True),
                            cfg.request_timeout_s)
            expect = solo[(p, m)]
            if o.responses != 1 and not o.error:
                fault(f"#{i} nonstream: {o.responses} responses")
        elif kind == "http":
            o = http_stream(http_url, p, greedy, cfg.request_timeout_s)
            expect = solo[(p, m)]
        elif kind in ("cancel", "abandon", "http_drop"):
            m = max(cfg.output_lengths)
            k = r.randint(1, 6)
            if kind == "cancel":
                o = grpc_stream(grpc_url, tensors_for(p, {**greedy, "max_tokens": m}), cfg.request_timeout_s,
                                stop_after=k)
            elif kind == "http_drop":
                o = http_stream(http_url, p, {**greedy, "max_tokens": m}, cfg.request_timeout_s, drop_after=k)
            else:
                o = Outcome("abandon")
                t0 = time.monotonic()
                try:
                    it = stream_grpc(grpc_url, MODEL, GenerateRequest(p, max_tokens=m, temperature=0.0,
                                                                      ignore_eos=True),
                                     timeout=cfg.request_timeout_s)
                    for chunk in it:
                        o.responses += 1
                        o.text += chunk.text
                        o.tokens += chunk.num_output_tokens or 0
                        o.final = chunk.final
                        if o.responses >= k and not o.final:
                            o.cancelled_by_client = True
                            break
                    it.close()   # what dropping the iterator does in CPython anyway, done at once
                except ClientError as e:
                    o.errors, o.error = 1, e.message
                    o.lost = e.code == "DEADLINE_EXCEEDED"
                o.latency_s = time.monotonic() - t0
            o.kind = kind
            # What arrived before the cancel is a prefix of the whole greedy text.
            if not solo[(p, m)].startswith(o.text):
                fault(f"#{i} {kind}: {o.text!r} is not a prefix of {solo[(p, m)]!r}")
            if o.error:
                fault(f"#{i} {kind}: error {o.error}")
            return o
        else:  # bad
            factory, field = BAD_REQUESTS[r.randrange(len(BAD_REQUESTS))]
            o = grpc_stream(grpc_url, factory(), cfg.request_timeout_s)
            o.kind = "bad"
            if o.responses or o.errors != 1 or field not in (o.error or ""):
                fault(f"#{i} bad ({field}): responses={o.responses} errors={o.errors} {o.error!r}")
            return o
        o.kind = kind
        if o.error or not o.final:
            fault(f"#{i} {kind}: error={o.error!r} final={o.final} lost={o.lost}")
        elif o.text != expect:
            fault(f"#{i} {kind}: text {o.text!r} != solo {expect!r}")
        elif o.tokens != m:
            fault(f"#{i} {kind}: {o.tokens} tokens, asked {m}")
        return o

    def worker(w: int) -> None:
        r = random.Random(cfg.seed * 1000 + w)
        while not stop.is_set():
            with lock:
                i = counters["next"]
                if i >= cfg.max_requests or (i >= cfg.warmup_requests and time.monotonic() > deadline):
                    return
                counters["next"] += 1
            try:
                o = one(i, r)
            except Exception as e:  # a client-side surprise is a fault too, not a crash of the run
                o = Outcome("exception", error=f"{type(e).__name__}: {e}")
                fault(f"#{i}: {o.error}")
            with lock:
                outcomes.append(o)
                counters["done"] += 1
                if counters["done"] >= cfg.warmup_requests:
                    warm.set()

    def sample_rss() -> None:
        while not stop.wait(cfg.rss_sample_s):
            try:
                rss_timeline.append((round(time.monotonic() - t_start, 1), round(sum(map(rss_mb, stubs)), 1)))
            except (OSError, RuntimeError):
                pass

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    rss_warm = None
    with ThreadPoolExecutor(cfg.concurrency) as pool:
        futures = [pool.submit(worker, w) for w in range(cfg.concurrency)]
        warm.wait(cfg.request_timeout_s)
        # The baseline once the warm-up requests have run and the KV cache is idle again.
        wait_until(lambda: scrape_metrics(metrics_url).get("vllm:num_requests_running", 1) == 0, 2.0)
        rss_warm = sum(map(rss_mb, stubs))
        for f in futures:
            f.result()
    elapsed = time.monotonic() - t_start
    stop.set()
    sampler.join(5)

    drained = wait_until(lambda: (s := scrape_metrics(metrics_url)) and s.get("llm_kv_cache_blocks_used", -1) == 0
                         and s.get("vllm:num_requests_running", -1) == 0
                         and s.get("vllm:num_requests_waiting", -1) == 0 and s, 30.0)
    after = scrape_metrics(metrics_url)
    rss_end = sum(map(rss_mb, stubs))
    rss_limit = rss_warm * (1 + cfg.rss_tolerance_frac) + cfg.rss_tolerance_mb
    stubs_alive = stub_pids(server_pid) == stubs

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    by_kind: dict[str, int] = {}
    for o in outcomes:
        by_kind[o.kind] = by_kind.get(o.kind, 0) + 1
    measured = [o for o in outcomes if o.kind in ("good", "seeded", "nonstream", "http") and o.final]
    lat = sorted(o.latency_s for o in measured)
    ttft = sorted(o.ttft_s for o in measured if o.ttft_s is not None)

    def pct(xs, q):
        return round(xs[min(len(xs) - 1, int(q / 100 * len(xs)))] * 1000, 1) if xs else None

    lost = sum(o.lost for o in outcomes)
    result = {
        "config": {**dataclasses.asdict(cfg), "output_lengths": list(cfg.output_lengths)},
        "requests_tried": len(outcomes),
        "by_kind": by_kind,
        "completed": sum(1 for o in outcomes if o.final),
        "cancelled_by_client": sum(o.cancelled_by_client for o in outcomes),
        "bad": by_kind.get("bad", 0),
        "faults": len(faults),
        "fault_samples": faults[:20],
        "lost": lost,
        "output_tokens": sum(o.tokens for o in outcomes),
        "elapsed_s": round(elapsed, 1),
        "requests_per_s": round(len(outcomes) / elapsed, 2),
        "output_tokens_per_s": round(sum(o.tokens for o in outcomes) / elapsed, 1),
        "latency_ms_p50": pct(lat, 50), "latency_ms_p99": pct(lat, 99),
        "ttft_ms_p50": pct(ttft, 50), "ttft_ms_p99": pct(ttft, 99),
        "server_cancelled": delta('vllm:request_success_total{finished_reason="cancelled"}'),
        "server_aborted": delta('vllm:request_success_total{finished_reason="abort"}'),
        "server_errors": delta('vllm:request_success_total{finished_reason="error"}'),
        "server_preemptions": delta("vllm:num_preemptions_total"),
        "server_generation_tokens": delta("vllm:generation_tokens_total"),
        "kv_blocks_used_after": after.get("llm_kv_cache_blocks_used"),
        "requests_running_after": after.get("vllm:num_requests_running"),
        "requests_waiting_after": after.get("vllm:num_requests_waiting"),
        "engine_healthy_after": after.get("llm_engine_healthy"),
        "drained": bool(drained),
        "stub_pids": stubs, "stubs_alive": stubs_alive,
        "rss_mb_after_warmup": round(rss_warm, 1), "rss_mb_end": round(rss_end, 1),
        "rss_mb_limit": round(rss_limit, 1), "rss_growth_mb": round(rss_end - rss_warm, 1),
        "rss_timeline": rss_timeline,
    }
    result["ok"] = bool(result["faults"] == 0 and lost == 0 and drained and rss_end <= rss_limit
                        and stubs_alive and result["engine_healthy_after"] == 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=300.0)
    ap.add_argument("--max-requests", type=int, default=1_000_000)
    ap.add_argument("--warmup-requests", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-prompts", type=int, default=24)
    ap.add_argument("--output-lengths", default="1,2,5,9,16,33,64")
    ap.add_argument("--mix", default="", help='JSON weights, e.g. {"good": 50, "cancel": 20, "bad": 10}')
    ap.add_argument("--rss-tolerance-frac", type=float, default=0.15)
    ap.add_argument("--rss-tolerance-mb", type=float, default=50.0)
    ap.add_argument("--grpc-url"), ap.add_argument("--http-url"), ap.add_argument("--metrics-url")
    ap.add_argument("--server-pid", type=int, help="tritonserver's pid (for the stub's RSS)")
    ap.add_argument("--model-dir", help="the served checkpoint (for the solo texts)")
    ap.add_argument("--num-kv-blocks", type=int, default=48, help="own server: KV-cache blocks")
    ap.add_argument("--max-num-seqs", type=int, default=16, help="own server")
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--out", help="write the figures here (JSON)")
    args = ap.parse_args()

    cfg = SoakConfig(duration_s=args.duration, max_requests=args.max_requests,
                     warmup_requests=args.warmup_requests, concurrency=args.concurrency, seed=args.seed,
                     num_prompts=args.num_prompts,
                     output_lengths=tuple(int(x) for x in args.output_lengths.split(",")),
                     rss_tolerance_frac=args.rss_tolerance_frac, rss_tolerance_mb=args.rss_tolerance_mb)
    if args.mix:
        cfg.mix = json.loads(args.mix)
    engine_kwargs = {"max_model_len": args.max_model_len, "num_kv_blocks": 256}
    server = None
    if args.grpc_url:
        if not (args.http_url and args.metrics_url and args.server_pid and args.model_dir):
            ap.error("--grpc-url needs --http-url, --metrics-url, --server-pid and --model-dir")
        urls = (args.grpc_url, args.http_url, args.metrics_url, args.server_pid, args.model_dir)
    else:
        import tempfile

        from tests.conftest import start_server, stop_server, write_model_repository
        from tools.random_llama import build
        tmp = Path(tempfile.mkdtemp(prefix="soak-"))
        model_dir = args.model_dir or build(tmp / "tiny", size="tiny", seed=1)
        repo = write_model_repository(tmp, Path(model_dir), num_kv_blocks=str(args.num_kv_blocks),
                                      max_num_seqs=str(args.max_num_seqs), max_model_len=str(args.max_model_len))
        server = start_server(tmp, repo, Path(model_dir))
        print(f"soak: server on {server.grpc_url} (log {server.log_path})", flush=True)
        urls = (server.grpc_url, server.http_url, server.metrics_url, server.process.pid, str(model_dir))
    try:
        result = run_soak(*urls, cfg, engine_kwargs)
    finally:
        if server is not None:
            rc, seconds = stop_timed(server.process)
            stop_server(server)
            reap(server.process)
    if server is not None:   # after a clean run the server must also stop cleanly
        result["shutdown_rc"], result["shutdown_s"] = rc, seconds
        result["ok"] = result["ok"] and rc == 0
    from perf.meta import git_commit
    result["git_commit"] = git_commit()
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("rss_timeline", "config")}, indent=2))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
