"""The load generator and perf_analyzer against the real tritonserver (`server` fixture of
tests/conftest.py: tiny model, KIND_CPU)."""
from __future__ import annotations

import pytest

from perf.loadgen import run_load
from perf.run_perf_analyzer import check_binary, run_perf_analyzer

IN, OUT = 32, 12


def check_requests(result, n, in_len=IN, out_len=OUT):
    m = result["metrics"]
    assert result["errors"]["count"] == 0, result["errors"]
    assert m["requests_ok"] == n and m["requests_cancelled"] == 0
    assert m["output_len_mismatch"] == 0 and m["input_len_mismatch"] == 0 and m["itl_count_mismatch"] == 0
    assert m["output_tokens"] == n * out_len
    assert m["output_tokps"] > 0 and m["requests_per_s"] > 0
    assert 0 < m["ttft_ms_p50"] <= m["ttft_ms_p99"] <= m["e2e_ms_p99"]
    assert m["itl_ms_p50"] is not None and m["tpot_ms_mean"] > 0
    for r in result["requests"]:
        assert r["error"] is None and not r["cancelled"]
        assert r["output_tokens"] == out_len and r["num_input_tokens"] == in_len
        assert 0 < r["ttft"] <= r["end"] - r["start"]
        assert len(r["itl"]) == out_len - 1 and all(g >= 0 for g in r["itl"])
        assert r["ttft"] + sum(r["itl"]) == pytest.approx(r["end"] - r["start"], abs=1e-6)
        assert r["finish_reason"] == "length"


def test_loadgen_fixed_concurrency(server):
    result = run_load(server.grpc_url, server.model, concurrency=4, input_len=IN, output_len=OUT, num_requests=8,
                      warmup=2, tokenizer=str(server.model_dir), save_requests=True, progress=False,
                      request_timeout=60, metrics_url=server.metrics_url)
    check_requests(result, 8)
    m = result["metrics"]
    # The server's own counters agree with the client (warm-up excluded).
    assert m["server_generation_tokens"] == 8 * OUT and m["server_requests_finished"] == 8
    assert m.get("server_running_max", 0) <= 4 and m["server_preemptions"] == 0   # polled: may miss a short run
    assert 0 < m["server_ttft_ms_mean"] <= m["ttft_ms_max"]
    assert m["concurrency"] == 4 and m["mean_input_tokens_server"] == IN
    assert m["steady_output_tokps"] is not None and m["client_processes"] == 1
    assert result["config"]["exact_input_len"] is True


def test_loadgen_request_rate_two_processes(server):
    result = run_load(server.grpc_url, server.model, concurrency=None, request_rate=20.0, input_len=IN,
                      output_len=OUT, num_requests=6, duration=30, tokenizer=str(server.model_dir),
                      processes=2, save_requests=True, progress=False, request_timeout=60)
    check_requests(result, 6)
    assert result["metrics"]["client_processes"] == 2 and result["metrics"]["request_rate"] == 20.0


def test_loadgen_duration_bound_and_drain_cancel(server):
    # Long outputs, a 1 s issuing window and no time to drain: in-flight requests get cancelled
    # and counted as such (not as errors); the tokens they streamed still count for throughput.
    result = run_load(server.grpc_url, server.model, concurrency=2, input_len=IN, output_len=900,
                      duration=1.0, drain_timeout=0.0, tokenizer=str(server.model_dir), progress=False)
    m = result["metrics"]
    assert result["errors"]["count"] == 0
    assert m["requests_cancelled"] >= 1 and m["output_tokens"] > 0 and m["duration_s"] < 30


def test_loadgen_reports_server_errors(server):
    # A prompt longer than max_model_len (1024) is refused by the server: every request fails.
    result = run_load(server.grpc_url, server.model, concurrency=2, input_len=1100, output_len=4, num_requests=3,
                      tokenizer=str(server.model_dir), progress=False, request_timeout=60)
    assert result["metrics"]["requests_ok"] == 0
    assert result["errors"]["count"] == 3 and "max_model_len" in result["errors"]["first"][0]


def test_perf_analyzer_runs_against_the_server(server, tmp_path):
    binary, why = check_binary()
    if binary is None:
        pytest.skip(f"perf_analyzer cannot run here: {why}")
    results = run_perf_analyzer(server.grpc_url, server.model, IN, OUT, [2], tokenizer=str(server.model_dir),
                                work_dir=tmp_path, num_prompts=8, measurement_interval_ms=1000, max_trials=3,
                                timeout_per_point=90)
    assert len(results) == 1
    r = results[0]
    assert r["ok"], r["errors"]
    m = r["metrics"]
    assert m["concurrency"] == 2 and m["requests_ok"] > 0
    assert m["output_len_mismatch"] == 0 and m["input_len_mismatch"] == 0
    assert m["pa_requests_per_s"] > 0 and m["pa_responses_per_s"] > 0
    assert m["ttft_ms_p50"] > 0 and m["output_tokps"] > 0
    assert (tmp_path / "inputs_32_12.json").is_file()


def test_loadgen_steady_window_when_no_request_ends_in_time(server):
    # Every request outlives --duration and the (zero) drain: the steady window falls back to the
    # deadline instead of going missing.
    result = run_load(server.grpc_url, server.model, concurrency=1, input_len=IN, output_len=900, duration=0.5,
                      drain_timeout=0.0, warmup=0, tokenizer=str(server.model_dir), progress=False)
    m = result["metrics"]
    assert m["requests_ok"] == 0 and m["requests_cancelled"] == 1 and result["errors"]["count"] == 0
    assert m["steady_window_s"] == pytest.approx(0.5, abs=0.05)
    assert m["steady_output_tokps"] is not None and m["steady_output_tokps"] > 0


def test_loadgen_exit_status_counts_errors(server, tmp_path):
    from perf.loadgen import main
    # Prompts of 1000 +- 60 tokens against max_model_len 1024: some are refused, some served.
    argv = ["--url", server.grpc_url, "--model", server.model, "--concurrency", "2", "--input-len", "1000",
            "--input-dist", "uniform", "--input-spread", "60", "--output-len", "4", "--num-requests", "8",
            "--warmup", "0", "--tokenizer", str(server.model_dir), "--no-progress", "--request-timeout", "60",
            "--out", str(tmp_path / "r.json")]
    assert main(argv) == 1
    import json
    m = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert 0 < m["requests_failed"] < 8 and m["requests_ok"] > 0, m
    assert main(argv + ["--max-error-rate", "0.9"]) == 0
    assert m["inter_response_ms_p50"] is not None
