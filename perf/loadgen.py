"""LLM load generator for the Triton-served model (gRPC streaming through client/'s asyncio API).

    python -m perf.loadgen --url 127.0.0.1:8001 --model llm --concurrency 8 \
        --input-len 128 --output-len 512 --num-requests 200 --tokenizer models/default --out result.json
    python -m perf.loadgen ... --sweep 1,8,32,128,256 --requests-per-worker 2 --duration 20 --out sweep.json
    python -m perf.loadgen ... --request-rate 4 --duration 30          # Poisson arrivals, 4 req/s

Load modes
  fixed concurrency  N workers, each sends its next request as soon as its previous one ended.
  request rate       Poisson arrivals at R requests/s (--arrival constant: evenly spaced, also over
                     several processes), any number in flight (--max-concurrency caps it; never
                     more processes than that cap).
A run ends at --num-requests measured requests or after --duration seconds, whichever comes first;
requests still in flight then run to completion (for at most --drain-timeout s, then they are
cancelled). --warmup requests (short outputs) go first and are not measured.

Prompts have an exact token count when a tokenizer is given (--tokenizer: a model dir with
tokenizer.json, or the file): they are random single-token words of its vocabulary, so the server's
own count (num_input_tokens, BOS included) equals --input-len. Without one, words approximate it.
Output length is fixed through sampling_parameters max_tokens = min_tokens = N, ignore_eos = true.
Lengths can be sampled: --input-dist uniform --input-spread 64 draws from [len-64, len+64],
--input-dist normal --input-spread 32 from N(len, 32) (same for --output-*).

Per request it records TTFT (send -> first response carrying tokens), inter-token latencies (gap
between successive token-carrying responses, divided evenly among the num_output_tokens that
response carries, so a request of n tokens has n-1 of them and they add up to E2E - TTFT),
inter-response gaps (the same gaps undivided, one per token-carrying response after the first, as
vLLM's benchmark_serving reports ITL: when the server merges several tokens into one response under
load, the ITL tail understates the stall a reader sees and this one does not), end-to-end latency
(send -> final response) and output tokens. It reports mean/p50/p90/p99 of TTFT, ITL,
inter-response gap, TPOT (per request (E2E-TTFT)/(n-1)) and E2E; output tokens/s over the whole run
(first send -> last response) and over the steady window (while the full load was held);
requests/s; errors.

Exit status: 0 when every point had a successful request and its errors (failed requests / all)
are at most --max-error-rate (default 0: any error fails the run), else 1.

Under heavy streaming one Python process can become the bottleneck (each token is one gRPC
message, ~170 us of client CPU each); --processes splits the workers over several processes (auto:
one per 16 streams, at most half the cores). `client_cpu_util` near 1.0 or a large
`client_loop_lag_ms_p99` means the client, not the server, limited the run: use more processes.
With --metrics-url the server's own counters are added (server_generation_tokps, server_ttft_ms_mean,
server_running_max, ...; see perf/server_metrics.py) to cross-check the client's view.

Function API: run_load(url, model, concurrency=..., ...) -> dict; run_sweep(...) -> list[dict].
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from perf.meta import git_commit  # noqa: E402  (re-exported for the other perf scripts)

PERCENTILES = (50, 90, 99)

# ------------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's
    default method). None for no values."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    frac = pos - lo
    return float(xs[lo] + (xs[hi] - xs[lo]) * frac)


def describe(values: Sequence[float], scale: float = 1.0) -> dict[str, float | None]:
    """mean, p50, p90, p99, min, max of values * scale (None entries for no values)."""
    vals = [v * scale for v in values]
    out: dict[str, float | None] = {"mean": (sum(vals) / len(vals)) if vals else None}
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(vals, q)
    out["min"] = min(vals) if vals else None
    out["max"] = max(vals) if vals else None
    return out


# ------------------------------------------------------------------------------------ lengths


@dataclass
class LengthSpec:
    """A token length: fixed, uniform in [mean-spread, mean+spread] or normal(mean, spread),
    rounded and clamped to [minimum, maximum]."""
    mean: int
    dist: str = "fixed"
    spread: float = 0.0
    minimum: int = 1
    maximum: int | None = None

    def __post_init__(self):
        if self.dist not in ("fixed", "uniform", "normal"):
            raise ValueError(f"length distribution {self.dist!r} is not fixed, uniform or normal")
        if self.mean < 1:
            raise ValueError(f"length {self.mean} must be >= 1")

    def sample(self, rng: random.Random) -> int:
        if self.dist == "fixed" or self.spread <= 0:
            n = self.mean
        elif self.dist == "uniform":
            lo = max(self.minimum, int(round(self.mean - self.spread)))
            n = rng.randint(lo, max(lo, int(round(self.mean + self.spread))))
        else:
            n = int(round(rng.gauss(self.mean, self.spread)))
        n = max(self.minimum, n)
        if self.maximum is not None:
            n = min(self.maximum, n)
        return n


# ------------------------------------------------------------------------------------ prompts

FALLBACK_WORDS = (
    "time person year way day thing man world life hand part child eye woman place work week case "
    "point government company number group problem fact house water room mother area money story "
    "month lot right study book job word business issue side kind head service friend father power "
    "hour game line end member law car city community name president team minute idea kid body "
    "information back parent face others level office door health art war history party result "
    "change morning reason research girl guy moment air teacher force education river garden table "
    "window paper music market letter model server token stream light green small large quick brown "
    "yellow simple early young strong happy final public local social national certain open").split()


def load_tokenizer(path: str | Path):
    """A `tokenizers.Tokenizer` from a model directory (its tokenizer.json) or the file itself."""
    from tokenizers import Tokenizer
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    return Tokenizer.from_file(str(p))


class PromptBuilder:
    """Prompts of a given token count, made of random words.

    With a tokenizer the words are vocabulary entries that encode to exactly one token after a
    space, so " w1 w2 ... wk" is k tokens plus the special tokens the tokenizer adds (BOS): the
    count is then checked by encoding and corrected. Without one, one word ~ one token."""

    def __init__(self, tokenizer: str | Path | Any | None = None, max_words: int = 4000):
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
        self.exact = self.tokenizer is not None
        if self.tokenizer is None:
            self.words = list(FALLBACK_WORDS)
            self.num_special = 1  # a BOS, as Llama tokenizers add
            return
        tok = self.tokenizer
        self.num_special = len(tok.encode("hello", add_special_tokens=True).ids) - \
            len(tok.encode("hello", add_special_tokens=False).ids)
        candidates = []
        for token_id in range(tok.get_vocab_size()):
            word = tok.decode([token_id]).strip()
            if 2 <= len(word) <= 12 and word.isascii() and word.isalpha():
                candidates.append(word)
        candidates = sorted(set(candidates))
        rng = random.Random(0)
        rng.shuffle(candidates)
        candidates = candidates[:max_words * 2]
        encoded = tok.encode_batch([" " + w for w in candidates], add_special_tokens=False)
        self.words = [w for w, e in zip(candidates, encoded) if len(e.ids) == 1][:max_words]
        if len(self.words) < 16:
            raise ValueError("the tokenizer has too few single-token words to build prompts")

    def count(self, text: str) -> int | None:
        """Tokens the server will see (special tokens included), or None without a tokenizer."""
        if self.tokenizer is None:
            return None
        return len(self.tokenizer.encode(text, add_special_tokens=True).ids)

    def build(self, num_tokens: int, rng: random.Random) -> str:
        k = max(1, num_tokens - self.num_special)
        words = [rng.choice(self.words) for _ in range(k)]
        text = " " + " ".join(words)
        if self.tokenizer is None:
            return text
        for _ in range(8):  # merges across words are rare; fix the count if one happened
            n = self.count(text)
            if n == num_tokens or k < 1:
                return text
            if n < num_tokens:
                words += [rng.choice(self.words) for _ in range(num_tokens - n)]
            else:
                words = words[:max(1, len(words) - (n - num_tokens))]
            text = " " + " ".join(words)
            k = len(words)
        return text


# ------------------------------------------------------------------------------- configuration


@dataclass
class LoadConfig:
    url: str = "127.0.0.1:8001"
    model: str = "llm"
    concurrency: int | None = 8            # fixed-concurrency mode (when request_rate is None)
    request_rate: float | None = None      # requests/s: Poisson mode
    arrival: str = "poisson"               # poisson | constant (request-rate mode)
    max_concurrency: int | None = None     # request-rate mode: cap on requests in flight
    input_len: int = 128
    input_dist: str = "fixed"
    input_spread: float = 0.0
    output_len: int = 128
    output_dist: str = "fixed"
    output_spread: float = 0.0
    ignore_eos: bool = True                # fixed output length: max_tokens = min_tokens, ignore_eos
    temperature: float | None = 0.0        # None: the server's default
    num_requests: int | None = None        # measured requests (None: only the duration bounds the run)
    duration: float | None = None          # seconds to keep issuing requests
    drain_timeout: float | None = None     # after issuing stops, cancel what is still running after this
    warmup: int = 0                        # unmeasured requests first
    warmup_output_len: int = 16
    warmup_timeout: float = 120.0          # seconds for the whole warmup; then it is cancelled
    request_timeout: float = 600.0
    tokenizer: str | None = None
    seed: int = 0
    processes: int | None = 1              # None: auto
    save_requests: bool = False
    progress: bool = True
    metrics_url: str | None = None         # Triton metrics port (host:port): adds server_* metrics
    label: str | None = None

    def validate(self) -> None:
        if self.request_rate is None and not self.concurrency:
            raise ValueError("give a concurrency or a request rate")
        if self.request_rate is not None and self.request_rate <= 0:
            raise ValueError("request rate must be > 0")
        if self.num_requests is None and self.duration is None:
            raise ValueError("bound the run with num_requests and/or duration")
        if self.arrival not in ("poisson", "constant"):
            raise ValueError("arrival must be poisson or constant")
        LengthSpec(self.input_len, self.input_dist, self.input_spread)
        LengthSpec(self.output_len, self.output_dist, self.output_spread)

    def input_spec(self) -> LengthSpec:
        return LengthSpec(self.input_len, self.input_dist, self.input_spread)

    def output_spec(self) -> LengthSpec:
        return LengthSpec(self.output_len, self.output_dist, self.output_spread)


def auto_processes(cfg: LoadConfig) -> int:
    streams = cfg.concurrency if cfg.request_rate is None else (cfg.max_concurrency or 64)
    cores = os.cpu_count() or 1
    # ~170 us of client CPU per streamed response (grpc aio + tritonclient parsing, measured): one
    # process keeps up with ~6k responses/s, so give every 16 streams a process, up to half the cores.
    return max(1, min(max(1, cores // 2), math.ceil((streams or 1) / 16)))


# ------------------------------------------------------------------------------------ records


@dataclass
class RequestRecord:
    index: int
    input_len: int                 # prompt tokens asked for (counted by the tokenizer when given)
    output_len: int                # max_tokens asked for
    start: float = 0.0             # time.perf_counter() when sent
    ttft: float | None = None      # seconds to the first response that carries tokens
    end: float | None = None       # arrival of the last response (final, or the last before an error)
    output_tokens: int = 0
    num_responses: int = 0
    itl: list[float] = field(default_factory=list)   # seconds, one per token after the first
    response_gaps: list[float] = field(default_factory=list)  # seconds between token-carrying responses
    num_input_tokens: int | None = None              # as the server counted them
    finish_reason: str | None = None
    error: str | None = None
    cancelled: bool = False
    last_token_time: float | None = None             # arrival of the last token-carrying response

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled and self.end is not None

    @property
    def e2e(self) -> float | None:
        return None if self.end is None else self.end - self.start

    def token_times(self) -> list[float]:
        """Arrival time of every output token (tokens of one response share its arrival)."""
        if self.ttft is None:
            return []
        t = self.start + self.ttft
        times = [t]
        for gap in self.itl:
            t += gap
            times.append(t)
        return times

    def add_response(self, arrival: float, num_tokens: int) -> None:
        """Account one streamed response carrying `num_tokens` tokens that arrived at `arrival`."""
        self.num_responses += 1
        self.end = arrival
        if num_tokens <= 0:
            return
        if self.last_token_time is None:
            self.ttft = arrival - self.start
            self.itl.extend([0.0] * (num_tokens - 1))
        else:
            self.response_gaps.append(arrival - self.last_token_time)
            gap = (arrival - self.last_token_time) / num_tokens
            self.itl.extend([gap] * num_tokens)
        self.last_token_time = arrival
        self.output_tokens += num_tokens


# ------------------------------------------------------------------------------------ one process


@dataclass
class _Part:
    """The share of the load one process runs."""
    index: int
    concurrency: int | None
    request_rate: float | None
    max_concurrency: int | None
    num_requests: int | None
    warmup: int
    seed: int
    first_arrival: float | None = None   # request-rate mode: first send this long after t0


def arrival_times(rate: float, arrival: str, rng: random.Random, t0: float = 0.0,
                  first: float | None = None):
    """Send times of one process's requests at `rate` requests/s, forever (the caller stops).

    constant: t0 + first, then every 1/rate (first defaults to 1/rate). With N processes sharing
    a total rate R, process i runs at R/N with first = (i+1)/R, so together they send every 1/R
    (all starting at t0 + 1/R would send in bursts of N). poisson: exponential gaps from t0 (the
    merged arrivals of independent Poisson processes are Poisson at the summed rate)."""
    if arrival == "constant":
        t = t0 + (1.0 / rate if first is None else first)
        while True:
            yield t
            t += 1.0 / rate
    t = t0
    while True:
        t += rng.expovariate(rate)
        yield t


def _make_request(cfg: LoadConfig, prompt: str, out_len: int, rid: str):
    from client import GenerateRequest
    sampling: dict[str, Any] = {}
    if cfg.ignore_eos:
        sampling["min_tokens"] = out_len
    return GenerateRequest(prompt=prompt, max_tokens=out_len, temperature=cfg.temperature,
                           ignore_eos=cfg.ignore_eos, stream=True, sampling=sampling, request_id=rid,
                           return_finish_reason=True, return_num_input_tokens=True,
                           return_num_output_tokens=True)


async def _send(client, cfg: LoadConfig, rec: RequestRecord, prompt: str) -> RequestRecord:
    from client import ClientError
    req = _make_request(cfg, prompt, rec.output_len, f"lg-{rec.index}")
    rec.start = time.perf_counter()
    try:
        async for chunk in client.stream(cfg.model, req, timeout=cfg.request_timeout):
            n = chunk.num_output_tokens
            if n is None:  # the server did not say: one token per response with text
                n = 1 if chunk.text else 0
            rec.add_response(chunk.time, n)
            if chunk.num_input_tokens is not None:
                rec.num_input_tokens = chunk.num_input_tokens
            if chunk.finish_reason is not None:
                rec.finish_reason = chunk.finish_reason
    except ClientError as e:
        rec.error = f"{e.code}: {e.message}"
        rec.end = time.perf_counter()
    except asyncio.CancelledError:
        rec.cancelled = True
        rec.end = time.perf_counter()
        raise
    except Exception as e:  # a client bug must not stop the run; count it
        rec.error = f"{type(e).__name__}: {e}"
        rec.end = time.perf_counter()
    return rec


class _LagMonitor:
    """How late the event loop wakes up (a busy loop distorts every client-side timing)."""

    def __init__(self, period: float = 0.01):
        self.period = period
        self.lags: list[float] = []
        self._task = None

    async def _run(self):
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.period)
            self.lags.append(max(0.0, time.perf_counter() - t - self.period))

    def start(self):
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self):
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


async def _run_part(cfg: LoadConfig, part: _Part, builder: PromptBuilder,
                    wait_start: Callable[[], float], on_done: Callable[[], None]) -> dict:
    """Warm up, wait for the common start, run this part's load; return its raw results."""
    from client import AsyncGrpcClient
    rng = random.Random(part.seed)
    in_spec, out_spec = cfg.input_spec(), cfg.output_spec()
    # Build the prompts before the clock starts (tokenizing is not free).
    if part.num_requests is not None:
        pool_size = part.num_requests
    elif part.request_rate is not None:
        pool_size = min(4096, int(part.request_rate * (cfg.duration or 60) * 1.5) + 16)
    else:
        pool_size = min(4096, (part.concurrency or 1) * 8)
    plan = []

    def prompt_for(i: int) -> tuple[int, int, str]:
        # Every request gets its own prompt (built ahead for the expected count, on demand past it),
        # so the server's prefix cache only ever shares the BOS.
        while len(plan) <= i:
            n_in = in_spec.sample(rng)
            plan.append((n_in, out_spec.sample(rng), builder.build(n_in, rng)))
        return plan[i]
    prompt_for(max(1, pool_size) - 1)
    # Warm-up prompts are distinct from the measured ones (else those would hit the prefix cache).
    wrng = random.Random(part.seed + 7919)
    warm_plan = []
    for _ in range(part.warmup):
        n_in = in_spec.sample(wrng)
        warm_plan.append((n_in, builder.build(n_in, wrng)))

    async with AsyncGrpcClient(cfg.url) as client:
        # -- warmup: same prompts' shape, short outputs, not measured
        warm_errors: list[str] = []
        if part.warmup > 0:
            wq = list(range(part.warmup))
            wcfg = cfg
            wc = max(1, min(part.warmup, part.concurrency or part.max_concurrency or 8))

            async def warm_worker():
                while wq:
                    i = wq.pop()
                    n_in, prompt = warm_plan[i]
                    rec = RequestRecord(-1 - i, n_in, min(cfg.output_len, cfg.warmup_output_len))
                    await _send(client, wcfg, rec, prompt)
                    if rec.error:
                        warm_errors.append(rec.error)
            try:
                await asyncio.wait_for(asyncio.gather(*[warm_worker() for _ in range(wc)]),
                                       timeout=cfg.warmup_timeout)
            except asyncio.TimeoutError:
                warm_errors.append(f"warmup: not done after {cfg.warmup_timeout}s, cancelled")
            # Let the server finish its bookkeeping of the warm-up (its metrics are updated after
            # the last response goes out) before the measured phase and its metrics snapshot.
            await asyncio.sleep(0.25)

        t0 = wait_start()
        now = time.perf_counter()
        if t0 > now:
            await asyncio.sleep(t0 - now)
        deadline = t0 + cfg.duration if cfg.duration is not None else math.inf
        records: list[RequestRecord] = []
        lag = _LagMonitor()
        lag.start()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        counter = {"issued": 0}
        stop_issue = {"t": None}

        def next_index() -> int | None:
            if part.num_requests is not None and counter["issued"] >= part.num_requests:
                return None
            if time.perf_counter() >= deadline:
                return None
            counter["issued"] += 1
            return counter["issued"] - 1

        def mark_stop():
            if stop_issue["t"] is None:
                stop_issue["t"] = time.perf_counter()

        async def one(i: int) -> None:
            n_in, n_out, prompt = prompt_for(i)
            rec = RequestRecord(part.index * 1_000_000 + i, n_in, n_out)
            records.append(rec)
            await _send(client, cfg, rec, prompt)
            on_done()

        if part.request_rate is None:
            async def worker():
                while True:
                    i = next_index()
                    if i is None:
                        mark_stop()  # the first worker to run dry ends the steady window
                        return
                    await one(i)
            tasks = [asyncio.ensure_future(worker()) for _ in range(part.concurrency or 0)]
        else:
            sem = asyncio.Semaphore(part.max_concurrency) if part.max_concurrency else None

            async def limited(i):
                if sem is None:
                    return await one(i)
                async with sem:
                    return await one(i)

            async def arrivals():
                inner = []
                schedule = arrival_times(part.request_rate, cfg.arrival, rng, t0, part.first_arrival)
                try:
                    while True:
                        t_next = next(schedule)
                        if t_next >= deadline:
                            break
                        delay = t_next - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        i = next_index()
                        if i is None:
                            break
                        inner.append(asyncio.ensure_future(limited(i)))
                    mark_stop()
                    await asyncio.gather(*inner)
                finally:
                    for t in inner:  # cancelled while issuing: stop what is in flight too
                        t.cancel()
            tasks = [asyncio.ensure_future(arrivals())]

        all_done = asyncio.gather(*tasks)
        if cfg.drain_timeout is None:
            await all_done
        else:
            # Wait until issuing has stopped, then give in-flight requests drain_timeout seconds.
            while not all_done.done():
                limit = None
                if stop_issue["t"] is not None:
                    limit = stop_issue["t"] + cfg.drain_timeout
                elif cfg.duration is not None:
                    limit = deadline + cfg.drain_timeout
                if limit is not None and time.perf_counter() >= limit:
                    break
                await asyncio.wait([all_done], timeout=0.05)
            if not all_done.done():
                all_done.cancel()
                try:
                    await all_done
                except asyncio.CancelledError:
                    pass
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        await lag.stop()
    if stop_issue["t"] is None and deadline < math.inf:
        # No worker ran dry: every request outlived the duration (and the drain). Issuing stopped
        # at the deadline all the same; that ends the steady window.
        stop_issue["t"] = deadline
    return {"records": records, "t0": t0, "stop_issue": stop_issue["t"], "cpu": cpu, "wall": wall,
            "lags": lag.lags, "warmup_errors": warm_errors}


def _split(total: int | None, parts: int) -> list[int | None]:
    if total is None:
        return [None] * parts
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _parts(cfg: LoadConfig, nproc: int) -> list[_Part]:
    if cfg.request_rate is None:
        nproc = max(1, min(nproc, cfg.concurrency or 1))
        conc = _split(cfg.concurrency, nproc)
        # Requests in proportion to the workers, so all parts finish about together.
        if cfg.num_requests is None:
            reqs: list[int | None] = [None] * nproc
        else:
            reqs, given = [], 0
            for i, c in enumerate(conc):
                n = round(cfg.num_requests * sum(conc[:i + 1]) / cfg.concurrency) - given
                reqs.append(n)
                given += n
        return [_Part(i, conc[i], None, None, reqs[i], _split(cfg.warmup, nproc)[i], cfg.seed * 1000 + i)
                for i in range(nproc)]
    if cfg.max_concurrency:
        # Each process gets a cap of at least 1 (a 0 cap would mean no limit at all).
        nproc = max(1, min(nproc, cfg.max_concurrency))
    reqs = _split(cfg.num_requests, nproc)
    maxc = _split(cfg.max_concurrency, nproc)
    return [_Part(i, None, cfg.request_rate / nproc, maxc[i], reqs[i], _split(cfg.warmup, nproc)[i],
                  cfg.seed * 1000 + i, first_arrival=(i + 1) / cfg.request_rate) for i in range(nproc)]


def _child(cfg: LoadConfig, part: _Part, results, ready, go_time, done_counter) -> None:
    """Entry point of a worker process (spawned)."""
    try:
        builder = PromptBuilder(cfg.tokenizer)

        def wait_start() -> float:
            ready.wait()
            while go_time.value == 0.0:
                time.sleep(0.001)
            return go_time.value

        def on_done():
            with done_counter.get_lock():
                done_counter.value += 1

        out = asyncio.run(_run_part(cfg, part, builder, wait_start, on_done))
        out["records"] = [asdict(r) for r in out["records"]]
        results.put((part.index, out))
    except BaseException as e:  # report instead of hanging the parent
        import traceback
        results.put((part.index, {"fatal": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}))
        try:
            ready.abort()
        except Exception:
            pass


class _Progress:
    def __init__(self, total: int | None, desc: str, enabled: bool):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.n = 0
        self.bar = None
        self.t0 = time.perf_counter()
        self.last_print = 0.0
        if not enabled:
            return
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="req", file=sys.stderr, dynamic_ncols=True,
                            mininterval=0.5 if sys.stderr.isatty() else 5.0, leave=False)
        except ImportError:
            self.bar = None

    def update(self, n: int) -> None:
        """Set the number of finished requests to n."""
        if not self.enabled or n == self.n:
            return
        if self.bar is not None:
            self.bar.update(n - self.n)
        else:
            now = time.perf_counter()
            if now - self.last_print >= 1.0 or (self.total and n >= self.total):
                self.last_print = now
                total = f"/{self.total}" if self.total else ""
                sys.stderr.write(f"\r{self.desc}: {n}{total} requests, {now - self.t0:.1f}s ")
                sys.stderr.flush()
        self.n = n

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            sys.stderr.write("\n")


def _run_single(cfg: LoadConfig, part: _Part, progress: _Progress, on_start: Callable[[], None]) -> list[dict]:
    builder = PromptBuilder(cfg.tokenizer)
    done = {"n": 0}

    def on_done():
        done["n"] += 1
        progress.update(done["n"])

    def start_now() -> float:
        on_start()
        return time.perf_counter()

    out = asyncio.run(_run_part(cfg, part, builder, start_now, on_done))
    return [out]


def _run_multi(cfg: LoadConfig, parts: list[_Part], progress: _Progress,
               on_start: Callable[[], None]) -> list[dict]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    ready = ctx.Barrier(len(parts) + 1)
    go_time = ctx.Value("d", 0.0)
    done_counter = ctx.Value("i", 0)
    procs = [ctx.Process(target=_child, args=(cfg, p, results, ready, go_time, done_counter), daemon=True)
             for p in parts]
    for p in procs:
        p.start()
    outs: dict[int, dict] = {}
    try:
        try:
            ready.wait(timeout=600)
        except Exception:
            pass  # a child failed before the start; its error is in the queue
        on_start()
        go_time.value = time.perf_counter() + 0.05
        while len(outs) < len(parts):
            try:
                idx, out = results.get(timeout=0.2)
                outs[idx] = out
            except Exception:
                if not any(p.is_alive() for p in procs) and results.empty():
                    break
            progress.update(done_counter.value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    fatal = [o["fatal"] for o in outs.values() if "fatal" in o]
    if fatal or len(outs) < len(parts):
        raise RuntimeError("a load-generator process failed:\n" + "\n".join(fatal or ["(no result)"]))
    for o in outs.values():
        o["records"] = [_record_from_dict(d) for d in o["records"]]
    return [outs[i] for i in sorted(outs)]


def _record_from_dict(d: dict) -> RequestRecord:
    return RequestRecord(**{k: v for k, v in d.items() if k in RequestRecord.__dataclass_fields__})


# ------------------------------------------------------------------------------------ summary


def summarize(records: list[RequestRecord], t0: float, stop_issue: float | None,
              expect_output_len: bool = True) -> dict[str, Any]:
    """Flat metrics from the measured requests. Latencies in ms; throughputs per second.

    duration: t0 (start of the measured phase) -> last response. output_tokps counts every token
    streamed in that time (also of failed/cancelled requests). steady_output_tokps counts the tokens
    that arrived in [t0, stop_issue], while the load was at its full level."""
    ok = [r for r in records if r.ok]
    failed = [r for r in records if r.error is not None]
    cancelled = [r for r in records if r.cancelled]
    ends = [r.end for r in records if r.end is not None]
    duration = (max(ends) - t0) if ends else 0.0
    total_tokens = sum(r.output_tokens for r in records)
    m: dict[str, Any] = {
        "requests": len(records), "requests_ok": len(ok), "requests_failed": len(failed),
        "requests_cancelled": len(cancelled), "duration_s": duration, "output_tokens": total_tokens,
        "output_tokps": total_tokens / duration if duration > 0 else None,
        "requests_per_s": len(ok) / duration if duration > 0 else None,
        "input_tokps": (sum((r.num_input_tokens or r.input_len) for r in ok) / duration
                        if duration > 0 else None),
    }
    steady = None
    m["steady_window_s"] = None
    if stop_issue is not None and ends:
        w_end = min(stop_issue, max(ends))
        if w_end - t0 > 1e-3:
            n = sum(1 for r in records for t in r.token_times() if t <= w_end)
            steady = n / (w_end - t0)
        m["steady_window_s"] = max(0.0, w_end - t0)
    m["steady_output_tokps"] = steady
    tpot = [((r.end - r.start) - r.ttft) / (r.output_tokens - 1) for r in ok
            if r.ttft is not None and r.output_tokens > 1]
    series = {
        "ttft_ms": [r.ttft for r in ok if r.ttft is not None],
        "itl_ms": [g for r in ok for g in r.itl],
        "inter_response_ms": [g for r in ok for g in r.response_gaps],
        "tpot_ms": tpot,
        "e2e_ms": [r.e2e for r in ok if r.e2e is not None],
    }
    for name, values in series.items():
        for stat, v in describe(values, 1000.0).items():
            m[f"{name}_{stat}"] = v
    m["mean_output_tokens"] = (sum(r.output_tokens for r in ok) / len(ok)) if ok else None
    served_in = [r.num_input_tokens for r in ok if r.num_input_tokens is not None]
    m["mean_input_tokens_server"] = (sum(served_in) / len(served_in)) if served_in else None
    m["mean_input_tokens_requested"] = (sum(r.input_len for r in ok) / len(ok)) if ok else None
    m["input_len_mismatch"] = sum(1 for r in ok if r.num_input_tokens is not None
                                  and r.num_input_tokens != r.input_len)
    m["output_len_mismatch"] = (sum(1 for r in ok if r.output_tokens != r.output_len)
                                if expect_output_len else None)
    m["itl_count_mismatch"] = sum(1 for r in ok if len(r.itl) != max(0, r.output_tokens - 1))
    return m


def error_summary(records: list[RequestRecord], extra: list[str] = (), first: int = 5) -> dict:
    msgs = [r.error for r in records if r.error is not None]
    by_code: dict[str, int] = {}
    for msg in msgs:
        code = msg.split(":", 1)[0]
        by_code[code] = by_code.get(code, 0) + 1
    out = {"count": len(msgs), "by_code": by_code, "first": msgs[:first]}
    if extra:
        out["warmup_errors"] = len(extra)
        out["warmup_first"] = list(extra[:first])
    return out


def run_load(url: str = "127.0.0.1:8001", model: str = "llm", **options) -> dict:
    """Run one load point and return its result (config, flat metrics, errors). Keyword options are
    the fields of LoadConfig (concurrency, request_rate, input_len, output_len, num_requests,
    duration, warmup, tokenizer, processes, ...)."""
    cfg = LoadConfig(url=url, model=model, **options)
    cfg.validate()
    nproc = cfg.processes if cfg.processes is not None else auto_processes(cfg)
    parts = _parts(cfg, nproc)
    label = cfg.label or (f"c{cfg.concurrency}" if cfg.request_rate is None else f"r{cfg.request_rate:g}")
    progress = _Progress(cfg.num_requests, f"{label} in{cfg.input_len}/out{cfg.output_len}", cfg.progress)
    t_wall = time.time()
    sampler = None
    if cfg.metrics_url:
        from perf.server_metrics import MetricsSampler
        sampler = MetricsSampler(cfg.metrics_url, cfg.model)

    def on_start():  # the measured phase begins (after the warm-up)
        if sampler:
            sampler.begin()

    try:
        outs = (_run_single(cfg, parts[0], progress, on_start) if len(parts) == 1
                else _run_multi(cfg, parts, progress, on_start))
    finally:
        progress.close()
        if sampler:
            sampler.stop()
    records = [r for o in outs for r in o["records"]]
    t0 = min(o["t0"] for o in outs)
    stops = [o["stop_issue"] for o in outs if o["stop_issue"] is not None]
    stop_issue = min(stops) if stops else None
    metrics = {"concurrency": cfg.concurrency if cfg.request_rate is None else None,
               "request_rate": cfg.request_rate, "input_len": cfg.input_len, "output_len": cfg.output_len}
    metrics.update(summarize(records, t0, stop_issue, expect_output_len=cfg.ignore_eos))
    # The server's rates over the same window as the client's (the sampler's own also holds the
    # client processes' start and end: ~0.1-0.25 s).
    server_side = sampler.metrics(metrics["duration_s"] or None) if sampler else {}
    lags = [x for o in outs for x in o["lags"]]
    metrics["client_processes"] = len(parts)
    metrics["client_cpu_util"] = max((o["cpu"] / o["wall"]) for o in outs if o["wall"] > 0) if outs else None
    metrics["client_loop_lag_ms_p99"] = (percentile(lags, 99) or 0.0) * 1000.0
    metrics.update(server_side)
    result = {
        "kind": "loadgen",
        "label": label,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t_wall)),
        "git_commit": git_commit(),
        "config": {**asdict(cfg), "processes": len(parts),
                   "exact_input_len": cfg.tokenizer is not None},
        "metrics": metrics,
        "errors": error_summary(records, [e for o in outs for e in o["warmup_errors"]]),
    }
    if cfg.save_requests:
        def rel(t):
            return None if t is None else t - t0
        # Times relative to the start of the measured phase (seconds).
        result["requests"] = [{**asdict(r), "start": rel(r.start), "end": rel(r.end),
                               "last_token_time": rel(r.last_token_time)} for r in records]
    return result


RATE_WARMUP = 8   # unmeasured requests before a request-rate point (unless --warmup)


def run_sweep(url: str, model: str, concurrencies: Sequence[int] = (), rates: Sequence[float] = (),
              requests_per_worker: float | None = None, min_requests: int = 1,
              on_result: Callable[[dict], None] | None = None, **options) -> list[dict]:
    """run_load at each concurrency (or request rate); requests_per_worker sets num_requests to
    max(min_requests, round(k * concurrency)) per point (num_requests otherwise)."""
    results = []
    points = [("c", c) for c in concurrencies] + [("r", r) for r in rates]
    for kind, value in points:
        opts = dict(options)
        if kind == "c":
            opts["concurrency"], opts["request_rate"] = int(value), None
            if requests_per_worker is not None:
                opts["num_requests"] = max(min_requests, int(round(requests_per_worker * value)))
        else:
            opts["request_rate"] = float(value)
        if "warmup" not in options:   # as a single run's default (main): min(c, 32), 8 for a rate
            opts["warmup"] = min(int(value), 32) if kind == "c" else RATE_WARMUP
        result = run_load(url, model, **opts)
        results.append(result)
        if on_result:
            on_result(result)
    return results


# ------------------------------------------------------------------------------------ CLI


def format_table(results: list[dict]) -> str:
    cols = [("label", "point", "{}"), ("requests_ok", "ok", "{}"), ("requests_failed", "err", "{}"),
            ("output_tokps", "out tok/s", "{:.1f}"), ("steady_output_tokps", "steady tok/s", "{:.1f}"),
            ("requests_per_s", "req/s", "{:.2f}"), ("ttft_ms_p50", "TTFT p50", "{:.1f}"),
            ("ttft_ms_p99", "TTFT p99", "{:.1f}"), ("itl_ms_p50", "ITL p50", "{:.2f}"),
            ("itl_ms_p99", "ITL p99", "{:.2f}"), ("e2e_ms_p50", "E2E p50", "{:.0f}"),
            ("client_cpu_util", "cli cpu", "{:.2f}")]
    rows = [[h for _, h, _ in cols]]
    for r in results:
        m = {**r["metrics"], "label": r.get("label", "")}
        rows.append(["-" if m.get(k) is None else f.format(m[k]) for k, _, f in cols])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m perf.loadgen", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=f"127.0.0.1:{os.environ.get('GRPC_PORT', '8001')}", help="gRPC host:port")
    p.add_argument("--model", default="llm")
    mode = p.add_argument_group("load")
    mode.add_argument("--concurrency", type=int, default=8, help="fixed-concurrency workers")
    mode.add_argument("--request-rate", type=float, default=None, help="requests/s (Poisson); overrides --concurrency")
    mode.add_argument("--arrival", choices=["poisson", "constant"], default="poisson")
    mode.add_argument("--max-concurrency", type=int, default=None, help="request-rate mode: in-flight cap")
    mode.add_argument("--sweep", default=None, help="comma-separated concurrencies, e.g. 1,8,32,128,256")
    mode.add_argument("--sweep-rate", default=None, help="comma-separated request rates")
    mode.add_argument("--num-requests", type=int, default=None, help="measured requests per point")
    mode.add_argument("--requests-per-worker", type=float, default=None,
                      help="fixed concurrency (and --sweep points): num_requests = this x concurrency; "
                           "not for request-rate points (bound those with --num-requests/--duration)")
    mode.add_argument("--duration", type=float, default=None, help="seconds to keep issuing requests")
    mode.add_argument("--drain-timeout", type=float, default=None,
                      help="cancel requests still running this long after issuing stopped")
    mode.add_argument("--warmup", type=int, default=None,
                      help=f"unmeasured requests first (default: min(c, 32); {RATE_WARMUP} at a request rate)")
    mode.add_argument("--warmup-output-len", type=int, default=16)
    mode.add_argument("--warmup-timeout", type=float, default=120.0, help="seconds for the whole warmup")
    mode.add_argument("--processes", default="auto", help="client processes, or 'auto' (one per 16 streams, at most half the cores)")
    shape = p.add_argument_group("request shape")
    shape.add_argument("--input-len", type=int, default=128)
    shape.add_argument("--input-dist", choices=["fixed", "uniform", "normal"], default="fixed")
    shape.add_argument("--input-spread", type=float, default=0.0, help="uniform: +-spread; normal: std")
    shape.add_argument("--output-len", type=int, default=128)
    shape.add_argument("--output-dist", choices=["fixed", "uniform", "normal"], default="fixed")
    shape.add_argument("--output-spread", type=float, default=0.0)
    shape.add_argument("--no-ignore-eos", action="store_true", help="let EOS end requests early (no min_tokens)")
    shape.add_argument("--temperature", type=float, default=0.0, help="default 0 (greedy); <0: server default")
    shape.add_argument("--tokenizer", "--model-dir", dest="tokenizer", default=None,
                       help="model dir (or tokenizer.json) for exact prompt token counts (default: $MODEL_DIR, "
                            "else models/default if present; 'none': approximate by words)")
    shape.add_argument("--seed", type=int, default=0)
    out = p.add_argument_group("output")
    out.add_argument("--out", default=None, help="write the result (a list for sweeps) as JSON here")
    out.add_argument("--save-requests", action="store_true", help="include every request's record")
    out.add_argument("--no-progress", action="store_true")
    out.add_argument("--request-timeout", type=float, default=600.0)
    out.add_argument("--max-error-rate", type=float, default=0.0,
                     help="exit 1 when a point's failed/all requests exceeds this (default 0: any error)")
    out.add_argument("--metrics-url", default=None,
                     help="Triton metrics host:port (e.g. 127.0.0.1:8002): adds the server's own numbers")
    return p


def default_tokenizer() -> str | None:
    for d in (os.environ.get("MODEL_DIR"), str(REPO / "models" / "default")):
        if d and (Path(d) / "tokenizer.json").is_file():
            return d
    return None


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse combinations that would be ignored or could not run, before any work."""
    sweep = args.sweep or args.sweep_rate
    if args.requests_per_worker is not None:
        if not sweep and args.request_rate is not None:
            p.error("--requests-per-worker applies to fixed concurrency only: with --request-rate "
                    "bound the run with --num-requests and/or --duration")
        if args.sweep_rate and args.num_requests is None and args.duration is None:
            p.error("--requests-per-worker sizes --sweep points only: --sweep-rate points need "
                    "--num-requests and/or --duration")
    if not 0.0 <= args.max_error_rate <= 1.0:
        p.error("--max-error-rate is a fraction in [0, 1]")


def exit_status(results: list[dict], max_error_rate: float = 0.0) -> int:
    """0 when every point had a successful request and failed/all <= max_error_rate, else 1."""
    for r in results:
        m = r["metrics"]
        if not m["requests_ok"]:
            return 1
        if m["requests_failed"] > max_error_rate * max(1, m["requests"]):
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    if args.tokenizer is None:
        args.tokenizer = default_tokenizer()
        if args.tokenizer:
            print(f"prompts tokenized with {args.tokenizer} (the served model's? else pass --tokenizer)",
                  file=sys.stderr)
    elif args.tokenizer.lower() == "none":
        args.tokenizer = None
    opts = dict(
        arrival=args.arrival, max_concurrency=args.max_concurrency, input_len=args.input_len,
        input_dist=args.input_dist, input_spread=args.input_spread, output_len=args.output_len,
        output_dist=args.output_dist, output_spread=args.output_spread, ignore_eos=not args.no_ignore_eos,
        temperature=None if args.temperature < 0 else args.temperature, num_requests=args.num_requests,
        duration=args.duration, drain_timeout=args.drain_timeout, warmup_output_len=args.warmup_output_len,
        warmup_timeout=args.warmup_timeout,
        request_timeout=args.request_timeout, tokenizer=args.tokenizer, seed=args.seed,
        processes=None if args.processes == "auto" else int(args.processes),
        save_requests=args.save_requests, progress=not args.no_progress, metrics_url=args.metrics_url)
    if args.warmup is not None:
        opts["warmup"] = args.warmup
    if args.num_requests is None and args.duration is None and args.requests_per_worker is None:
        opts["num_requests"] = 100
    sweep = args.sweep or args.sweep_rate
    if sweep:
        concs = [int(x) for x in args.sweep.split(",")] if args.sweep else []
        rates = [float(x) for x in args.sweep_rate.split(",")] if args.sweep_rate else []

        def show(r):
            print(format_table([r]).splitlines()[-1], file=sys.stderr, flush=True)

        results = run_sweep(args.url, args.model, concs, rates, args.requests_per_worker,
                            on_result=show, **opts)
    else:
        if args.request_rate is not None:
            opts["request_rate"] = args.request_rate
            opts["concurrency"] = None
        else:
            opts["concurrency"] = args.concurrency
        if args.requests_per_worker is not None and args.num_requests is None and args.request_rate is None:
            opts["num_requests"] = max(1, int(round(args.requests_per_worker * args.concurrency)))
        opts.setdefault("warmup", RATE_WARMUP if args.request_rate is not None else min(args.concurrency, 32))
        results = [run_load(args.url, args.model, **opts)]
    print(format_table(results))
    for r in results:
        m = r["metrics"]
        if m.get("input_len_mismatch"):
            print(f"{r['label']}: {m['input_len_mismatch']} prompts were not {m['input_len']} tokens for the server "
                  f"(mean {m['mean_input_tokens_server']:.1f}): pass the served model's --tokenizer", file=sys.stderr)
        if r["errors"]["count"]:
            print(f"{r['label']}: {r['errors']['count']} errors, e.g. {r['errors']['first'][:3]}", file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results if sweep else results[0], indent=2))
    return exit_status(results, args.max_error_rate)


if __name__ == "__main__":
    sys.exit(main())
