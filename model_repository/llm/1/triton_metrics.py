"""Custom Prometheus metrics on Triton's metrics port (pb_utils.MetricFamily).

Names follow Triton's vLLM backend where it has the same metric, so existing dashboards work;
labels are {"model", "version"} as there. Request-level metrics are taken by the adapter when a
request's responses go out (what the client sees); engine gauges are refreshed by a small thread.

Every metric update is a message to the Triton server process. Made by the thread that sends the
responses, they were ~15% of its wall time at concurrency 128 on the H100 (py-spy,
perf/results/2026-11-24-h100/served_host_path/10_stub_wall_profile/), time in which no response
went out. So `token_gaps` and `request_finished` only queue the observation; the metrics thread
applies queued observations at most every FLUSH_S (and at close), before refreshing the gauges.

The inter-token latency has one observation per generated token: tens of thousands a second on an
H100, each of which, made with a Triton histogram's `observe`, is one message to the server and back
(~80 us here, milliseconds when the stub's other threads hold the GIL). The metrics thread could not
keep up: its queue grew without bound under load (at the end of a c128 point on the H100 fewer than
half of the point's latencies, and none of its token counts, had reached /metrics:
perf/results/2026-12-07-h100/itl_metrics_ab/), and every message also held up the server thread
that passes the responses on. So that histogram is kept here (`CountedHistogram`: exact bucket
counts, sum and count) and published every ITL_PUBLISH_S as counters in the histogram's own series
(`_bucket{le}`, `_sum`, `_count`), a few messages whatever the token rate; PromQL's
histogram_quantile() reads them as it reads a histogram.
"""
from __future__ import annotations

import bisect
import threading
import time
from collections import deque

import triton_python_backend_utils as pb_utils

LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   7.5, 10.0, 20.0, 40.0, 80.0]
ITL_BUCKETS = [0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
               0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]
FINISH_REASONS = ("stop", "length", "abort", "error", "cancelled")
REJECT_REASONS = ("invalid_argument", "unavailable", "internal")
FLUSH_S = 0.02   # the longest a queued observation waits before it reaches Triton's metrics
ITL_PUBLISH_S = 0.25   # ... and an inter-token latency (CountedHistogram), whatever the token rate


class CountedHistogram:
    """A Prometheus histogram counted here and published as counters: `<name>_bucket{le}` (cumulative,
    as a histogram's), `<name>_sum` and `<name>_count`. One `publish` costs one server message per
    series that changed, however many observations it carries. Used by one thread (the metrics one)."""

    def __init__(self, family, name: str, description: str, labels: dict[str, str], buckets: list[float]):
        counter = pb_utils.MetricFamily.COUNTER
        self.bounds = list(buckets)
        bucket_family = family(f"{name}_bucket", description, counter)
        self._buckets = [bucket_family.Metric(labels={**labels, "le": f"{b:g}"}) for b in self.bounds]
        self._buckets.append(bucket_family.Metric(labels={**labels, "le": "+Inf"}))
        self._sum = family(f"{name}_sum", description, counter).Metric(labels=labels)
        self._count = family(f"{name}_count", description, counter).Metric(labels=labels)
        self._new = [0] * len(self._buckets)   # observations not published yet, per bucket (not cumulative)
        self._new_sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        self._new[bisect.bisect_left(self.bounds, value)] += count   # le: value <= bound
        self._new_sum += value * count

    def publish(self) -> None:
        new, self._new = self._new, [0] * len(self._buckets)
        total = 0
        for bucket, n in zip(self._buckets, new):
            total += n   # bucket le=b counts every observation <= b
            if total:
                bucket.increment(total)
        if total:
            self._sum.increment(self._new_sum)
            self._count.increment(total)
        self._new_sum = 0.0




class LLMMetrics:
    def __init__(self, labels: dict[str, str], instance: str, engine, healthy=lambda: True,
                 refresh_s: float = 0.5):
        # Counters and histograms of all instances add up; gauges would overwrite each other, so
        # they carry the instance name too.
        gauge_labels = {**labels, "instance": instance}
        C, G, H = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE, pb_utils.MetricFamily.HISTOGRAM
        self.engine = engine
        self.is_healthy = healthy
        # Triton requires each MetricFamily to outlive its Metric objects: keep them all here.
        self._families: list = []

        def _family(name, description, kind):
            family = pb_utils.MetricFamily(name=name, description=description, kind=kind)
            self._families.append(family)
            return family

        self.prompt_tokens = _family("vllm:prompt_tokens_total", "Prompt tokens processed", C).Metric(labels=labels)
        self.generation_tokens = _family("vllm:generation_tokens_total", "Generated tokens", C).Metric(labels=labels)
        self.ttft = _family("vllm:time_to_first_token_seconds", "Time to first token", H).Metric(
            labels=labels, buckets=LATENCY_BUCKETS)
        self.itl = CountedHistogram(_family, "vllm:time_per_output_token_seconds", "Inter-token latency",
                                    labels, ITL_BUCKETS)
        self._itl_published = time.monotonic()
        self.e2e = _family("vllm:e2e_request_latency_seconds", "End-to-end request latency", H).Metric(
            labels=labels, buckets=LATENCY_BUCKETS)
        success = _family("vllm:request_success_total", "Finished requests by finish reason", C)
        self.finished = {r: success.Metric(labels={**labels, "finished_reason": r}) for r in FINISH_REASONS}
        # Triton counts a decoupled request as a success once execute() took it, refused or not:
        # this is where bad input (invalid_argument) and overload or a dead engine (unavailable)
        # show up. A refused request is not in vllm:request_success_total.
        rejected = _family("llm_requests_rejected_total", "Requests refused before generating (by reason)", C)
        self.rejected = {r: rejected.Metric(labels={**labels, "reason": r}) for r in REJECT_REASONS}
        self.running = _family("vllm:num_requests_running", "Requests in the running batch", G).Metric(labels=gauge_labels)
        self.waiting = _family("vllm:num_requests_waiting", "Requests waiting to be scheduled", G).Metric(labels=gauge_labels)
        self.kv_usage = _family("vllm:gpu_cache_usage_perc", "KV-cache usage (0-1; CPU cache too)", G).Metric(labels=gauge_labels)
        self.kv_blocks_used = _family("llm_kv_cache_blocks_used", "KV-cache blocks in use", G).Metric(labels=gauge_labels)
        self.preemptions = _family("vllm:num_preemptions_total", "Preempted sequences", C).Metric(labels=labels)
        self.prefix_hit_rate = _family("vllm:gpu_prefix_cache_hit_rate", "Prefix-cache hit rate (tokens)", G).Metric(labels=gauge_labels)
        # 0 after a fatal engine error: Triton 2.51 cannot mark a Python model not-ready, so a
        # liveness check reads this instead (see README, Deployment).
        self.healthy = _family("llm_engine_healthy", "1 while the engine loop runs, 0 after a fatal error", G).Metric(labels=gauge_labels)
        self.healthy.set(1)
        self._last_preemptions = 0
        self._pending: deque[tuple] = deque()   # observations not applied yet (deque: thread-safe appends)
        self._queued = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, args=(refresh_s,), name="llm-metrics", daemon=True)
        self._thread.start()

    def request_finished(self, reason: str, prompt_tokens: int, output_tokens: int,
                         ttft_s: float | None, e2e_s: float) -> None:
        self._pending.append((reason, prompt_tokens, output_tokens, ttft_s, e2e_s))
        self._queued.set()

    def request_rejected(self, reason: str) -> None:
        self._pending.append((reason,))
        self._queued.set()

    def token_gaps(self, seconds: float, count: int) -> None:
        """`count` tokens came `seconds` apart each (an output that carried several merged tokens)."""
        self._pending.append((seconds, count))
        self._queued.set()

    def _apply_pending(self) -> None:
        # Counters move once per flush by what queued up (one server message each), not per request.
        counts: dict[int, list] = {}   # id(counter) -> [counter, n]: pybind objects, keyed by identity
        prompt_total = output_total = 0
        while self._pending:
            item = self._pending.popleft()
            if len(item) == 2:
                self.itl.observe(*item)
                continue
            if len(item) == 1:
                counter = self.rejected.get(item[0], self.rejected["internal"])
            else:
                reason, prompt_tokens, output_tokens, ttft_s, e2e_s = item
                prompt_total += prompt_tokens
                output_total += output_tokens
                if ttft_s is not None:
                    self.ttft.observe(ttft_s)
                self.e2e.observe(e2e_s)
                counter = self.finished.get(reason, self.finished["error"])
            counts.setdefault(id(counter), [counter, 0])[1] += 1
        if prompt_total:
            self.prompt_tokens.increment(prompt_total)
        if output_total:
            self.generation_tokens.increment(output_total)
        for counter, n in counts.values():
            counter.increment(n)

    def refresh(self) -> None:
        self.healthy.set(1 if self.is_healthy() else 0)
        s = self.engine.stats()
        self.running.set(s.num_running)
        self.waiting.set(s.num_waiting)
        self.kv_blocks_used.set(s.kv_blocks_used)
        self.kv_usage.set(s.kv_blocks_used / max(1, s.kv_blocks_total))
        if s.num_preemptions > self._last_preemptions:
            self.preemptions.increment(s.num_preemptions - self._last_preemptions)
            self._last_preemptions = s.num_preemptions
        if s.prefix_cache_queries:
            self.prefix_hit_rate.set(s.prefix_cache_hits / s.prefix_cache_queries)

    def _refresh_loop(self, period: float) -> None:
        next_refresh = time.monotonic() + period
        while not self._stop.is_set():
            self._queued.wait(max(0.0, min(next_refresh, self._itl_published + ITL_PUBLISH_S) - time.monotonic()))
            self._queued.clear()
            try:   # never let metrics take the model down
                self._apply_pending()
                now = time.monotonic()
                if now >= self._itl_published + ITL_PUBLISH_S:
                    self.itl.publish()
                    self._itl_published = now
                if now >= next_refresh:
                    self.refresh()
                    next_refresh = time.monotonic() + period
            except Exception:
                pass
            self._stop.wait(FLUSH_S)   # observations queued meanwhile go together

    def close(self) -> None:
        self._stop.set()
        self._queued.set()
        self._thread.join(2)
        try:
            self._apply_pending()
            self.itl.publish()
        except Exception:
            pass
