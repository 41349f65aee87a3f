"""Short soak through the real server (the CI cut of perf/soak.py; run that for hours):
concurrent streams with random prompt/output lengths, client cancellations (stop_stream with
cancel_requests, abandoned iterators, dropped HTTP streams) and bad requests mixed in.

Every completed greedy request has its solo text, every cancelled one a prefix of it, every bad one
exactly one error naming the field; nothing is lost; afterwards the KV blocks are back to 0 and the
stub process's RSS has not grown beyond 15 % + 50 MB of its value after the warm-up.
"""
from __future__ import annotations

import json

import pytest

from perf.soak import SoakConfig, reap, run_soak, stop_timed
from tests.conftest import start_server, stop_server, write_model_repository

# 48 blocks of 16 tokens for 8 streams of up to ~200 tokens each: preemption happens too.
SERVER = dict(num_kv_blocks="48", max_num_seqs="16", max_model_len="512")
CONFIG = SoakConfig(duration_s=20.0, warmup_requests=40, concurrency=8, seed=7, num_prompts=12,
                    max_prompt_words=100, output_lengths=(1, 3, 8, 17, 40), request_timeout_s=90.0)


@pytest.fixture(scope="module")
def soak_server(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("soak")
    srv = start_server(tmp, write_model_repository(tmp, tiny_model_dir, **SERVER), tiny_model_dir)
    yield srv
    stop_server(srv)
    reap(srv.process)


def test_short_soak(soak_server, tmp_path):
    srv = soak_server
    result = run_soak(srv.grpc_url, srv.http_url, srv.metrics_url, srv.process.pid, str(srv.model_dir), CONFIG,
                      engine_kwargs={"max_model_len": 512, "num_kv_blocks": 256}, log=lambda msg: None)
    (tmp_path / "soak.json").write_text(json.dumps(result, indent=2))
    figures = {k: v for k, v in result.items() if k not in ("config", "rss_timeline", "fault_samples")}
    print("\nsoak figures:", json.dumps(figures))
    assert result["faults"] == 0, result["fault_samples"]
    assert result["lost"] == 0
    assert result["requests_tried"] >= 150 and result["completed"] >= 80
    assert result["cancelled_by_client"] >= 10 and result["bad"] >= 10
    # The server saw the cancellations (some may have finished before the cancel arrived).
    assert 0 < result["server_cancelled"] <= result["cancelled_by_client"]
    assert result["server_errors"] == 0 and result["server_aborted"] == 0
    assert result["drained"] and result["kv_blocks_used_after"] == 0
    assert result["engine_healthy_after"] == 1 and result["stubs_alive"]
    assert result["rss_mb_end"] <= result["rss_mb_limit"], (result["rss_mb_after_warmup"], result["rss_timeline"])
    assert result["ok"]
    rc, seconds = stop_timed(srv.process)   # and it stops cleanly, at once, after all that
    assert rc == 0 and seconds < 15, (rc, seconds)
