"""Load-generator options and statistics fixed after review: constant arrivals over several
processes, max-concurrency caps per process, inter-response gaps, the steady window when no
request ends in time, argument checks and the exit status."""
from __future__ import annotations

import itertools
import random

import pytest

from perf.loadgen import (LoadConfig, RequestRecord, _parts, arrival_times, build_parser, check_args,
                          exit_status, main, summarize)


def merged_schedule(cfg: LoadConfig, nproc: int, count: int) -> list[float]:
    """The first `count` send times of all processes together (t0 = 0)."""
    times = []
    for part in _parts(cfg, nproc):
        gen = arrival_times(part.request_rate, cfg.arrival, random.Random(part.seed), 0.0, part.first_arrival)
        times += list(itertools.islice(gen, count))
    return sorted(times)[:count]


@pytest.mark.parametrize("nproc", [1, 2, 3, 4])
def test_constant_arrivals_stay_evenly_spaced_over_processes(nproc):
    cfg = LoadConfig(concurrency=None, request_rate=8.0, arrival="constant", num_requests=40)
    times = merged_schedule(cfg, nproc, 24)
    # One request every 1/8 s from t0 + 1/8: no bursts of nproc requests at the same instant.
    assert times == pytest.approx([(k + 1) / 8.0 for k in range(24)])


def test_single_process_constant_schedule_unchanged():
    gen = arrival_times(4.0, "constant", random.Random(0), t0=10.0)
    assert list(itertools.islice(gen, 3)) == pytest.approx([10.25, 10.5, 10.75])


def test_poisson_schedule_rate():
    gen = arrival_times(50.0, "poisson", random.Random(1), t0=0.0)
    times = list(itertools.islice(gen, 5000))
    assert all(b > a for a, b in zip(times, times[1:]))
    assert 5000 / times[-1] == pytest.approx(50.0, rel=0.05)


@pytest.mark.parametrize("maxc,nproc", [(2, 4), (1, 8), (3, 3), (5, 2)])
def test_max_concurrency_never_gives_a_process_a_zero_cap(maxc, nproc):
    parts = _parts(LoadConfig(concurrency=None, request_rate=10.0, max_concurrency=maxc, num_requests=20), nproc)
    caps = [p.max_concurrency for p in parts]
    assert all(c >= 1 for c in caps) and sum(caps) == maxc   # 0 would mean "no limit"
    assert len(parts) == min(nproc, maxc)
    assert sum(p.request_rate for p in parts) == pytest.approx(10.0)
    assert sum(p.num_requests for p in parts) == 20


def test_inter_response_gaps_are_not_divided_by_tokens():
    # Responses of 3, 2 and 1 tokens at 0.5, 0.7 and 0.75 s: ITL splits the 0.2 s gap over two
    # tokens (0.1 each), the reader waited 0.2 s: that is the inter-response gap.
    r = RequestRecord(0, 8, 6, start=0.0)
    for t, n in [(0.5, 3), (0.7, 2), (0.72, 0), (0.75, 1)]:
        r.add_response(t, n)
    assert r.itl == pytest.approx([0.0, 0.0, 0.1, 0.1, 0.05])
    assert r.response_gaps == pytest.approx([0.2, 0.05])   # the token-less response is not a gap
    r.finish_reason = "length"
    m = summarize([r], t0=0.0, stop_issue=1.0)
    assert m["inter_response_ms_max"] == pytest.approx(200.0) and m["itl_ms_max"] == pytest.approx(100.0)
    assert m["inter_response_ms_mean"] == pytest.approx(125.0)
    assert m["inter_response_ms_p50"] == pytest.approx(125.0)
    assert "itl_ms_p99" in m and "tpot_ms_mean" in m   # the existing fields stay


def test_steady_window_key_always_present():
    r = RequestRecord(0, 8, 6, start=0.0)
    r.add_response(0.5, 1)
    r.cancelled = True
    assert summarize([r], t0=0.0, stop_issue=None)["steady_window_s"] is None
    assert summarize([], t0=0.0, stop_issue=1.0)["steady_window_s"] is None
    assert summarize([r], t0=0.0, stop_issue=2.0)["steady_window_s"] == pytest.approx(0.5)


def args_of(*argv):
    p = build_parser()
    a = p.parse_args(list(argv))
    check_args(p, a)
    return a


@pytest.mark.parametrize("argv", [
    ["--request-rate", "4", "--requests-per-worker", "2"],
    ["--request-rate", "4", "--requests-per-worker", "2", "--duration", "5"],   # would be ignored
    ["--sweep-rate", "1,2", "--requests-per-worker", "2"],
    ["--max-error-rate", "2"],
])
def test_bad_option_combinations_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        args_of(*argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--request-rate", "4"],                                            # 100 requests by default
    ["--request-rate", "4", "--duration", "5"],
    ["--requests-per-worker", "2"],
    ["--sweep", "1,2", "--requests-per-worker", "2"],
    ["--sweep", "1,2", "--sweep-rate", "3", "--requests-per-worker", "2", "--duration", "5"],
])
def test_good_option_combinations_pass(argv):
    args_of(*argv)


def test_main_rejects_rate_with_requests_per_worker_without_a_traceback(capsys):
    # Used to reach LoadConfig.validate() and die with a ValueError traceback.
    with pytest.raises(SystemExit) as info:
        main(["--url", "127.0.0.1:1", "--request-rate", "4", "--requests-per-worker", "2", "--no-progress"])
    assert info.value.code == 2
    assert "--requests-per-worker" in capsys.readouterr().err


def point(ok, failed, cancelled=0):
    return {"metrics": {"requests": ok + failed + cancelled, "requests_ok": ok, "requests_failed": failed}}


def test_exit_status():
    assert exit_status([point(10, 0)]) == 0
    assert exit_status([point(10, 1)]) == 1                      # any error fails by default
    assert exit_status([point(9, 1)], max_error_rate=0.1) == 0
    assert exit_status([point(8, 2)], max_error_rate=0.1) == 1
    assert exit_status([point(10, 0), point(0, 0, 3)]) == 1      # a point with no successful request
    assert exit_status([point(10, 0, 5)]) == 0                   # drained (cancelled) requests are not errors


@pytest.mark.parametrize("argv, warmups", [
    (["--sweep", "1,64"], [1, 32]),
    (["--sweep-rate", "4,16"], [8, 8]),      # rate points had none (the first measured a cold server)
    (["--request-rate", "4"], [8]),
    (["--concurrency", "4"], [4]),
    (["--sweep-rate", "4", "--warmup", "3"], [3]),
])
def test_every_point_gets_the_default_warmup(argv, warmups, monkeypatch):
    import perf.loadgen as loadgen
    seen = []

    def fake_run_load(url, model, **opts):
        seen.append(opts["warmup"])
        return {"label": "x", "metrics": {"requests": 1, "requests_ok": 1, "requests_failed": 0}, "errors": {"count": 0}}
    monkeypatch.setattr(loadgen, "run_load", fake_run_load)
    monkeypatch.setattr(loadgen, "format_table", lambda results: "table")
    loadgen.main(["--url", "127.0.0.1:1", "--no-progress", "--num-requests", "4", *argv])
    assert seen == warmups


def test_server_metrics_use_the_clients_window_and_skip_stale_gauges():
    """Rates over the window the client measured (not the sampler's own, which also holds the
    client processes' start and end), and gauges only once the model has refreshed them."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from perf import server_metrics

    started = time.perf_counter()

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self):
            refreshed = time.perf_counter() - started > 0.6   # the gauge's first refresh in the run
            body = (f'vllm:generation_tokens_total{{model="llm"}} {1000 if refreshed else 0}\n'
                    f'vllm:num_requests_running{{model="llm"}} {4 if refreshed else 0}\n').encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        sampler = server_metrics.MetricsSampler(f"127.0.0.1:{httpd.server_port}", "llm", period=0.05)
        sampler.begin()
        time.sleep(1.2)
        sampler.stop()
    finally:
        httpd.shutdown()
    m = sampler.metrics(seconds=0.5)
    assert m["server_generation_tokens"] == 1000 and m["server_generation_tokps"] == pytest.approx(2000.0)
    assert sampler.metrics()["server_generation_tokps"] == pytest.approx(1000 / sampler.elapsed)
    # Polled only from GAUGE_REFRESH_S on: the stale zeros of the first refresh period are left out.
    assert m["server_running_max"] == 4 and m["server_running_mean"] >= 3.0, sampler.gauges["running"]
