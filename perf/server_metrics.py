"""The server's own view of a load run, from Triton's metrics port (Prometheus text).

The model exports vLLM-backend-named metrics (model_repository/llm/1/triton_metrics.py):
token counters, TTFT/ITL/E2E histograms, running/waiting requests, KV-cache usage, preemptions.
`MetricsSampler` snapshots the counters at the start and end of the measured phase and polls the
gauges in between (a thread), giving flat `server_*` metrics:

  server_generation_tokps      generated tokens / wall time, as the server counted them
  server_ttft_ms_mean, server_itl_ms_mean, server_e2e_ms_mean   histogram sum/count deltas
  server_ttft_observations, server_itl_observations, server_e2e_observations   count deltas
  server_requests_finished     by any finish reason; server_preemptions (delta)
  server_running_max, server_waiting_max, server_kv_usage_max   peaks of the polled gauges
  server_running_mean          mean of the polled running-batch size
  server_prefix_cache_hit_rate the server's cumulative rate at the end of the run

Rates are over the client's measured window when the load generator gives it (MetricsSampler.
metrics). The model refreshes its gauges every GAUGE_REFRESH_S, so they are polled at evenly
spaced times (their plain mean is a time average) from one refresh after the start on: earlier
they may still show the state before the run. A point shorter than that has no gauge metrics.

Unreachable or unknown metrics just leave their keys out.
"""
from __future__ import annotations

import re
import threading
import time
import urllib.request

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str, model: str | None = None) -> dict[str, float]:
    """{metric name: value summed over label sets} (only series labelled model=<model> when given;
    histogram buckets are skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        if name.endswith("_bucket"):
            continue
        if model is not None and labels:
            lab = dict(_LABEL.findall(labels))
            if "model" in lab and lab["model"] != model:
                continue
        try:
            v = float(value)
        except ValueError:
            continue
        out[name] = out.get(name, 0.0) + v
    return out


def scrape(metrics_url: str, model: str | None = None, timeout: float = 2.0) -> dict[str, float] | None:
    url = metrics_url if metrics_url.startswith("http") else f"http://{metrics_url}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return parse_prometheus(r.read().decode("utf-8", errors="replace"), model)
    except OSError:
        return None


COUNTERS = {"generation": "vllm:generation_tokens_total", "prompt": "vllm:prompt_tokens_total",
            "preemptions": "vllm:num_preemptions_total", "finished": "vllm:request_success_total"}
HISTOGRAMS = {"ttft": "vllm:time_to_first_token_seconds", "itl": "vllm:time_per_output_token_seconds",
              "e2e": "vllm:e2e_request_latency_seconds"}
GAUGES = {"running": "vllm:num_requests_running", "waiting": "vllm:num_requests_waiting",
          "kv_usage": "vllm:gpu_cache_usage_perc"}


def delta_metrics(before: dict, after: dict, seconds: float, gauges: dict[str, list[float]]) -> dict:
    m: dict = {}

    def d(name):
        if name in before and name in after:
            return after[name] - before[name]
        return None

    gen = d(COUNTERS["generation"])
    if gen is not None and seconds > 0:
        m["server_generation_tokps"] = gen / seconds
        m["server_generation_tokens"] = gen
    prompt = d(COUNTERS["prompt"])
    if prompt is not None and seconds > 0:
        m["server_prompt_tokps"] = prompt / seconds
    for key in ("preemptions", "finished"):
        v = d(COUNTERS[key])
        if v is not None:
            m[f"server_{'requests_finished' if key == 'finished' else key}"] = v
    for key, base in HISTOGRAMS.items():
        s, c = d(base + "_sum"), d(base + "_count")
        if c is not None:   # itl: one per generated token after each request's first, once published
            m[f"server_{key}_observations"] = c
        if s is not None and c:
            m[f"server_{key}_ms_mean"] = s / c * 1000.0
    for key, values in gauges.items():
        if values:
            m[f"server_{key}_max"] = max(values)
            if key == "running":
                m["server_running_mean"] = sum(values) / len(values)
    # Triton's own per-model counters: how long requests waited in the server's queue before the
    # model's execute() took them, and how long execute() held them (it returns once a request
    # is handed to the engine, so that is the adapter's submit path).
    requests = d("nv_inference_request_success")
    if requests:
        for key, name in (("queue", "nv_inference_queue_duration_us"),
                          ("execute", "nv_inference_compute_infer_duration_us")):
            us = d(name)
            if us is not None:
                m[f"server_triton_{key}_ms_mean"] = us / requests / 1000.0
        executions = d("nv_inference_exec_count")
        if executions:
            m["server_triton_requests_per_execute"] = requests / executions
    if "vllm:gpu_prefix_cache_hit_rate" in after:
        m["server_prefix_cache_hit_rate"] = after["vllm:gpu_prefix_cache_hit_rate"]
    return m


GAUGE_REFRESH_S = 0.5   # model_repository/llm/1/triton_metrics.py refreshes the engine gauges this often


class MetricsSampler:
    """begin() at the start of the measured phase, stop() after it, then metrics(); gauges polled
    every `period`."""

    def __init__(self, metrics_url: str, model: str | None = None, period: float = 0.25):
        self.url, self.model, self.period = metrics_url, model, period
        self.before: dict | None = None
        self.t_begin = 0.0
        self.gauges: dict[str, list[float]] = {k: [] for k in GAUGES}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.elapsed = 0.0
        self.after: dict | None = None

    def begin(self) -> None:
        self.before = scrape(self.url, self.model)
        self.t_begin = time.perf_counter()
        self._thread = threading.Thread(target=self._poll, name="metrics-sampler", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.period):
            if time.perf_counter() - self.t_begin < GAUGE_REFRESH_S:
                continue   # the gauges may not have been refreshed since the run began
            snap = scrape(self.url, self.model, timeout=self.period)
            if snap:
                for key, name in GAUGES.items():
                    if name in snap:
                        self.gauges[key].append(snap[name])

    # The model applies its request observations on its metrics thread within ~20 ms of the last
    # response, and publishes inter-token latencies every 0.25 s (model_repository/llm/1/
    # triton_metrics.py, FLUSH_S and ITL_PUBLISH_S): let them land.
    SETTLE_S = 0.4

    def stop(self) -> None:
        """The measured phase is over: stop polling, let the last observations land, snapshot."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(2)
        self.elapsed = time.perf_counter() - self.t_begin
        time.sleep(self.SETTLE_S)
        self.after = scrape(self.url, self.model)

    def metrics(self, seconds: float | None = None) -> dict:
        """The flat server_* metrics; rates over `seconds` (the client's measured window), else
        over begin() .. stop()."""
        if self._thread is None:
            return {}
        if not self.before or not self.after:
            return {"server_metrics_error": f"could not scrape {self.url}"}
        return delta_metrics(self.before, self.after, seconds or self.elapsed, self.gauges)
