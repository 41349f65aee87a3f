"""perf/report.py: markdown and PNG plots from sample result JSONs (every kind it reads)."""
from __future__ import annotations

import json

from perf.report import classify, load_results, main, make_report, served_series


def loadgen_point(c, tokps, shape=(128, 512), kind="loadgen"):
    return {"kind": kind, "label": f"c{c}", "metrics": {
        "concurrency": c, "request_rate": None, "input_len": shape[0], "output_len": shape[1],
        "requests_ok": 2 * c, "requests_failed": 0, "output_tokps": tokps, "steady_output_tokps": tokps,
        "requests_per_s": tokps / shape[1], "ttft_ms_p50": 10.0 * c, "ttft_ms_p90": 12.0 * c,
        "ttft_ms_p99": 20.0 * c, "itl_ms_p50": 2.0 + c / 100, "itl_ms_p90": 3.0, "itl_ms_p99": 5.0 + c / 50,
        "tpot_ms_mean": 2.5, "e2e_ms_p50": 1000.0, "e2e_ms_p99": 1500.0}}


def sample_dir(tmp_path):
    d = tmp_path / "results"
    d.mkdir()
    (d / "loadgen_in128_out512.json").write_text(json.dumps(
        [loadgen_point(c, 400.0 * c ** 0.8) for c in (1, 8, 32, 128, 256)]))
    (d / "loadgen_in1024_out128.json").write_text(json.dumps(
        [loadgen_point(c, 300.0 * c ** 0.7, (1024, 128)) for c in (1, 8, 32)]))
    (d / "pa_in128_out512.json").write_text(json.dumps(
        [loadgen_point(c, 410.0 * c ** 0.8, kind="perf_analyzer") for c in (1, 32)]))
    (d / "offline.json").write_text(json.dumps({
        "kind": "offline", "device": "NVIDIA H100 80GB HBM3",
        "points": [{"concurrency": c, "input_len": 128, "output_len": 512, "output_tokps": 500.0 * c ** 0.85,
                    "decode_tokps": 520.0 * c ** 0.85, "ttft_ms_p50": 5.0, "duration_s": 1.0} for c in (1, 8, 32, 128, 256)],
        "skipped": ["1024x128@c256"],
        "metrics": {"copy_tbps": 3.0, "weight_gb": 2.47, "roofline_bs1_tokps": 1214.0}}))
    (d / "hf_baseline.json").write_text(json.dumps({
        "kind": "hf_baseline", "device": "NVIDIA H100 80GB HBM3", "dtype": "torch.bfloat16", "transformers": "5.17",
        "points": [{"batch": 1, "input_len": 128, "output_len": 64, "output_tokps": 12.0, "duration_s": 5.3},
                   {"batch": 32, "input_len": 128, "output_len": 64, "output_tokps": 361.0, "duration_s": 5.7}],
        "metrics": {"hf_bs1_output_tokps": 12.0, "hf_bs32_output_tokps": 361.0}}))
    (d / "serving.json").write_text(json.dumps({
        "device": "NVIDIA H100 80GB HBM3", "command": "bash perf/run_gpu_bench.sh", "git_commit": "abc",
        "date": "2026-11-23", "metrics": {"served_c1_ttft_p50_ms": 10.0, "served_c256_output_tokps": 33000.0}}))
    (d / "not_a_result.json").write_text("[1, 2")   # unreadable files are ignored
    return d


def test_report_from_a_results_directory(tmp_path):
    d = sample_dir(tmp_path)
    results = load_results([d])
    groups = classify(results)
    assert len(groups["loadgen"]) == 8 and len(groups["perf_analyzer"]) == 2
    assert len(groups["offline"]) == 1 and len(groups["hf_baseline"]) == 1 and len(groups["summary"]) == 1
    assert list(served_series(groups["loadgen"])) == [(128, 512), (1024, 128)]
    paths = make_report(results, tmp_path / "out")
    assert set(paths) == {"markdown", "throughput", "ttft", "itl"}
    for key in ("throughput", "ttft", "itl"):
        data = open(paths[key], "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    md = open(paths["markdown"]).read()
    assert "input 128 / output 512" in md and "input 1024 / output 128" in md
    assert "| 256 | 512 | 0 |" in md                       # c256 row of the served table
    assert "perf_analyzer" in md and "Offline engine" in md and "HF transformers" in md
    assert "served_c256_output_tokps" in md and "1024x128@c256" in md
    assert "![throughput](throughput.png)" in md


def test_report_cli_with_only_loadgen(tmp_path):
    f = tmp_path / "one.json"
    f.write_text(json.dumps(loadgen_point(4, 1000.0)))
    assert main([str(f), "--out-dir", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    assert "| 4 | 8 | 0 | 1000.0 |" in md
    assert (tmp_path / "o" / "throughput.png").is_file()
    assert main([str(tmp_path / "missing.json"), "--out-dir", str(tmp_path / "p")]) == 1
