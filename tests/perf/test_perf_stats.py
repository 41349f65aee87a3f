"""Load-generator arithmetic on synthetic timings: percentiles, per-token attribution of streamed
responses, the run summary, length sampling and how the load is split over processes."""
from __future__ import annotations

import random

import numpy as np
import pytest

from perf.gpu_bench import flat_point, ratios
from perf.loadgen import (LengthSpec, LoadConfig, RequestRecord, _parts, describe, error_summary, format_table,
                          percentile, summarize)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_percentile_matches_numpy_linear(n):
    rng = np.random.default_rng(n)
    xs = rng.exponential(3.0, n).tolist()
    for q in (0, 1, 50, 90, 99, 99.9, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12, abs=1e-12)


def test_percentile_and_describe_edge_cases():
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    d = describe([0.001, 0.002, 0.003], scale=1000.0)
    assert d["mean"] == pytest.approx(2.0) and d["p50"] == pytest.approx(2.0)
    assert d["min"] == pytest.approx(1.0) and d["max"] == pytest.approx(3.0)
    assert describe([])["p99"] is None and describe([])["mean"] is None


def record(start, arrivals, counts=None, output_len=None, index=0, input_len=8):
    """A record fed with responses at `arrivals` (absolute seconds) carrying `counts` tokens each."""
    counts = counts or [1] * len(arrivals)
    r = RequestRecord(index, input_len, output_len if output_len is not None else sum(counts), start=start)
    for t, n in zip(arrivals, counts):
        r.add_response(t, n)
    r.num_input_tokens = input_len
    r.finish_reason = "length"
    return r


def test_one_token_per_response():
    r = record(10.0, [10.1, 10.15, 10.25, 10.3])
    assert r.ttft == pytest.approx(0.1)
    assert r.itl == pytest.approx([0.05, 0.1, 0.05])
    assert r.output_tokens == 4 and r.e2e == pytest.approx(0.3)
    assert r.token_times() == pytest.approx([10.1, 10.15, 10.25, 10.3])


def test_multi_token_responses_split_the_gap():
    # First response carries 3 tokens (they arrived together: two zero gaps), then a response of 2
    # tokens 0.2 s later (0.1 s each), then one of 1 token.
    r = record(0.0, [0.5, 0.7, 0.75], [3, 2, 1])
    assert r.output_tokens == 6
    assert r.itl == pytest.approx([0.0, 0.0, 0.1, 0.1, 0.05])
    assert len(r.itl) == r.output_tokens - 1
    assert sum(r.itl) == pytest.approx(r.e2e - r.ttft)
    assert r.token_times()[-1] == pytest.approx(0.75)


def test_responses_without_tokens_do_not_count():
    r = record(0.0, [0.2, 0.3, 0.35, 0.5], [0, 1, 0, 1])  # e.g. an empty-text/flags-only response
    assert r.ttft == pytest.approx(0.3)          # the first response that carries a token
    assert r.itl == pytest.approx([0.2])
    assert r.e2e == pytest.approx(0.5) and r.num_responses == 4


def test_summarize_known_values():
    # Two concurrent requests from t=0, 4 tokens each, 0.1 s TTFT, 0.1 s between tokens.
    recs = [record(0.0, [0.1, 0.2, 0.3, 0.4], index=0), record(0.0, [0.1, 0.2, 0.3, 0.4], index=1)]
    m = summarize(recs, t0=0.0, stop_issue=0.4)
    assert m["requests_ok"] == 2 and m["requests_failed"] == 0
    assert m["duration_s"] == pytest.approx(0.4)
    assert m["output_tokens"] == 8 and m["output_tokps"] == pytest.approx(20.0)
    assert m["steady_output_tokps"] == pytest.approx(20.0)
    assert m["requests_per_s"] == pytest.approx(5.0)
    assert m["ttft_ms_p50"] == pytest.approx(100.0) and m["ttft_ms_p99"] == pytest.approx(100.0)
    assert m["itl_ms_mean"] == pytest.approx(100.0) and m["tpot_ms_mean"] == pytest.approx(100.0)
    assert m["e2e_ms_p50"] == pytest.approx(400.0)
    assert m["output_len_mismatch"] == 0 and m["input_len_mismatch"] == 0 and m["itl_count_mismatch"] == 0
    assert m["mean_input_tokens_server"] == 8


def test_summarize_failed_cancelled_and_steady_window():
    ok = record(0.0, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], index=0)
    failed = RequestRecord(1, 8, 10, start=0.0)
    failed.add_response(0.2, 1)
    failed.error = "UNAVAILABLE: queue full"
    cancelled = RequestRecord(2, 8, 10, start=0.5)
    cancelled.add_response(0.6, 1)
    cancelled.add_response(0.7, 1)
    cancelled.cancelled = True
    m = summarize([ok, failed, cancelled], t0=0.0, stop_issue=0.5)
    assert (m["requests_ok"], m["requests_failed"], m["requests_cancelled"]) == (1, 1, 1)
    assert m["output_tokens"] == 13                 # every streamed token counts for throughput
    assert m["output_tokps"] == pytest.approx(13.0)
    assert m["steady_output_tokps"] == pytest.approx(6 / 0.5)   # 5 + 1 tokens by t=0.5
    assert m["ttft_ms_p50"] == pytest.approx(100.0)             # latency from successful requests only
    errs = error_summary([ok, failed, cancelled], ["warm failed"])
    assert errs["count"] == 1 and errs["by_code"] == {"UNAVAILABLE": 1}
    assert errs["warmup_errors"] == 1


def test_summarize_flags_wrong_lengths():
    r = record(0.0, [0.1, 0.2], output_len=5, input_len=8)
    r.num_input_tokens = 9
    m = summarize([r], 0.0, None)
    assert m["output_len_mismatch"] == 1 and m["input_len_mismatch"] == 1
    assert m["steady_output_tokps"] is None


def test_length_spec_sampling():
    rng = random.Random(0)
    assert {LengthSpec(100).sample(rng) for _ in range(10)} == {100}
    u = [LengthSpec(100, "uniform", 20).sample(rng) for _ in range(2000)]
    assert min(u) >= 80 and max(u) <= 120 and abs(np.mean(u) - 100) < 2
    n = [LengthSpec(100, "normal", 10).sample(rng) for _ in range(4000)]
    assert abs(np.mean(n) - 100) < 1.5 and 8 < np.std(n) < 12
    assert min(LengthSpec(3, "normal", 50).sample(rng) for _ in range(200)) >= 1
    with pytest.raises(ValueError):
        LengthSpec(10, "zipf")


def test_load_is_split_over_processes():
    cfg = LoadConfig(concurrency=10, num_requests=25, warmup=5)
    parts = _parts(cfg, 3)
    assert sum(p.concurrency for p in parts) == 10
    assert sum(p.num_requests for p in parts) == 25
    assert sum(p.warmup for p in parts) == 5
    assert len({p.seed for p in parts}) == 3
    rate = _parts(LoadConfig(concurrency=None, request_rate=9.0, num_requests=10), 3)
    assert sum(p.request_rate for p in rate) == pytest.approx(9.0) and sum(p.num_requests for p in rate) == 10
    assert len(_parts(LoadConfig(concurrency=2, num_requests=4), 8)) == 2   # never more processes than workers


def test_config_validation():
    with pytest.raises(ValueError):
        LoadConfig(concurrency=4).validate()                 # unbounded run
    with pytest.raises(ValueError):
        LoadConfig(concurrency=None, num_requests=3).validate()
    LoadConfig(concurrency=4, duration=1.0).validate()


def test_format_table_and_bench_keys():
    recs = [record(0.0, [0.1, 0.2, 0.3, 0.4])]
    m = {"concurrency": 1, **summarize(recs, 0.0, 0.4), "client_cpu_util": 0.1}
    assert "c1" in format_table([{"label": "c1", "metrics": m}])
    flat = flat_point("served_c1", m)
    assert flat["served_c1_ttft_p50_ms"] == pytest.approx(100.0)
    assert flat["served_c1_output_tokps"] == pytest.approx(10.0)
    r = ratios({"served_c1_output_tokps": 10.0, "offline_c1_output_tokps": 20.0, "roofline_bs1_tokps": 40.0},
               [(128, 512)], [1])
    assert r["served_vs_offline_c1"] == pytest.approx(0.5) and r["served_c1_vs_roofline"] == pytest.approx(0.25)


def test_prometheus_parsing_and_deltas():
    from perf.server_metrics import delta_metrics, parse_prometheus
    text = """# HELP vllm:generation_tokens_total Generated tokens
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model="llm",version="1"} 1500
vllm:generation_tokens_total{model="other",version="1"} 99
vllm:request_success_total{finished_reason="length",model="llm",version="1"} 10
vllm:request_success_total{finished_reason="stop",model="llm",version="1"} 2
vllm:time_to_first_token_seconds_bucket{model="llm",version="1",le="0.1"} 12
vllm:time_to_first_token_seconds_sum{model="llm",version="1"} 0.6
vllm:time_to_first_token_seconds_count{model="llm",version="1"} 12
vllm:num_requests_running{model="llm",version="1"} 3
nv_inference_count{model="llm",version="1"} 12
"""
    after = parse_prometheus(text, "llm")
    assert after["vllm:generation_tokens_total"] == 1500 and after["vllm:request_success_total"] == 12
    assert "vllm:time_to_first_token_seconds_bucket" not in after
    before = {"vllm:generation_tokens_total": 500.0, "vllm:request_success_total": 2.0,
              "vllm:time_to_first_token_seconds_sum": 0.1, "vllm:time_to_first_token_seconds_count": 2.0}
    m = delta_metrics(before, after, 2.0, {"running": [1.0, 3.0, 2.0], "waiting": [], "kv_usage": [0.5]})
    assert m["server_generation_tokps"] == 500.0 and m["server_requests_finished"] == 10
    assert m["server_ttft_ms_mean"] == pytest.approx(50.0) and m["server_ttft_observations"] == 10
    assert m["server_running_max"] == 3.0 and m["server_running_mean"] == 2.0 and m["server_kv_usage_max"] == 0.5
    assert "server_waiting_max" not in m
