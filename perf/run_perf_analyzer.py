"""Run perf_analyzer (Triton's own load generator, 2.51) against the decoupled model and turn its
results into the same JSON shape as perf/loadgen.py.

    python -m perf.run_perf_analyzer --url 127.0.0.1:8001 --model llm --input-len 128 --output-len 512 \
        --concurrency 1,8,32 --tokenizer models/default --out perf/results/pa.json

For each concurrency it runs
    perf_analyzer -m llm -u URL -i grpc --streaming --async --concurrency-range C:C:1
        --input-data perf/perf_analyzer/inputs_<in>_<out>.json -p <interval ms> -s <stability %> -r <trials>
        -f <csv> --verbose-csv --profile-export-file <export.json>
(one invocation per point, so a slow point cannot eat the others' time; --range START:END:STEP runs
one linear --concurrency-range sweep instead). The CSV gives perf_analyzer's own numbers (requests/s,
responses/s, request-latency percentiles; for a decoupled model PA's "latency" is the whole
request). The profile export has every response's timestamp; from it TTFT, ITL (split by
num_output_tokens per response, as in loadgen), E2E and output tokens/s are computed the same way as
in loadgen, so the two clients can be compared point by point.

perf_analyzer needs libb64.so.0d and libcudart.so.12 on LD_LIBRARY_PATH (see ../shared/RUNTIME.md):
pa_env() finds them in .venv/lib/perf_analyzer (tools/setup.sh), /tmp/ts/lib (tools/device_unpack.sh)
or makes the links from the nvidia-pytriton wheel's libraries.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from perf.loadgen import RequestRecord, git_commit, summarize  # noqa: E402

LIB_NAMES = ("libb64.so.0d", "libcudart.so.12")


def find_binary(explicit: str | None = None) -> str | None:
    candidates = [explicit] if explicit else []
    candidates += [shutil.which("perf_analyzer"), str(Path(sys.executable).parent / "perf_analyzer"),
                   str(REPO / ".venv" / "bin" / "perf_analyzer"),
                   "/tmp/ts/tritonclient-2.51.0.data/data/bin/perf_analyzer"]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


def _lib_dirs_with(names=LIB_NAMES) -> list[str]:
    dirs = [str(REPO / ".venv" / "lib" / "perf_analyzer"), "/tmp/ts/lib"]
    dirs += [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    return [d for d in dirs if all(Path(d, n).exists() for n in names)]


def _make_lib_links() -> str | None:
    """Symlinks with the SONAMEs perf_analyzer wants, to the nvidia-pytriton wheel's libraries."""
    roots = [Path(sysconfig.get_paths()["purelib"]) / "nvidia_pytriton.libs", Path("/tmp/ts/nvidia_pytriton.libs")]
    if os.environ.get("TRITON_SERVER_DIR"):
        roots.append(Path(os.environ["TRITON_SERVER_DIR"]).parents[1] / "nvidia_pytriton.libs")
    for root in roots:
        b64 = sorted(glob.glob(str(root / "libb64-*.so.0d")))
        cudart = sorted(glob.glob(str(root / "libcudart-*.so.12*")))
        if b64 and cudart:
            d = Path(tempfile.mkdtemp(prefix="pa-libs-"))
            os.symlink(b64[0], d / "libb64.so.0d")
            os.symlink(cudart[0], d / "libcudart.so.12")
            return str(d)
    return None


def pa_env() -> dict:
    env = dict(os.environ)
    dirs = _lib_dirs_with()
    if not dirs:
        made = _make_lib_links()
        dirs = [made] if made else []
    env["LD_LIBRARY_PATH"] = ":".join(dirs + [d for d in env.get("LD_LIBRARY_PATH", "").split(":") if d])
    return env


def check_binary(binary: str | None = None) -> tuple[str | None, str]:
    """(path, version line) when perf_analyzer runs here, else (None, why not)."""
    path = find_binary(binary)
    if path is None:
        return None, "no perf_analyzer binary (install tritonclient[all]==2.51.0 or source tools/device_unpack.sh)"
    try:
        p = subprocess.run([path, "--version"], env=pa_env(), capture_output=True, text=True, timeout=30)
    except Exception as e:
        return None, f"{path} --version failed: {e}"
    out = (p.stdout + p.stderr).strip()
    if p.returncode != 0:
        return None, f"{path} --version exited {p.returncode}: {out[-500:]}"
    return path, out.splitlines()[0] if out else "perf_analyzer"


# ------------------------------------------------------------------------------------- parsing


def _num(text: str):
    try:
        x = float(text)
    except (TypeError, ValueError):
        return text
    return int(x) if x.is_integer() and "." not in str(text) else x


def parse_csv(path: str | Path) -> list[dict]:
    """perf_analyzer's -f CSV (first table only: it may append server-metrics tables after a blank
    line). Latency columns stay in microseconds as PA writes them."""
    lines = Path(path).read_text().splitlines()
    table = []
    for line in lines:
        if not line.strip():
            break
        table.append(line)
    return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(table)]


def records_from_export(export: dict) -> list[tuple[dict, list[RequestRecord]]]:
    """Per experiment: (its description, one RequestRecord per request). Times in seconds."""
    out = []
    for exp in export.get("experiments", []):
        recs = []
        for i, req in enumerate(exp.get("requests", [])):
            start = req["timestamp"] / 1e9
            sp = req.get("request_inputs", {}).get("sampling_parameters")
            max_tokens = 0
            if sp:
                try:
                    max_tokens = int(json.loads(sp).get("max_tokens", 0))
                except (ValueError, AttributeError):
                    pass
            rec = RequestRecord(i, 0, max_tokens, start=start)
            outputs = req.get("response_outputs") or []
            for j, ts in enumerate(req.get("response_timestamps", [])):
                o = outputs[j] if j < len(outputs) else {}
                n = o.get("num_output_tokens")
                if not isinstance(n, int) or n <= 0:
                    # not returned (PA shows 0): one token per response that has text
                    n = 1 if o.get("text_output", "x") != "" else 0
                rec.add_response(ts / 1e9, n)
                nin = o.get("num_input_tokens")
                if isinstance(nin, int) and nin > 0:
                    rec.num_input_tokens = nin
            if rec.end is None:
                rec.error = "no response"
            recs.append(rec)
        out.append((exp.get("experiment", {}), recs))
    return out


def metrics_from_export(records: list[RequestRecord], input_len: int | None = None) -> dict:
    if not records:
        return {}
    for r in records:
        if input_len is not None:
            r.input_len = input_len
    t0 = min(r.start for r in records)
    # PA keeps the concurrency up until its last window ends: the steady window is up to the last
    # request start.
    last_start = max(r.start for r in records)
    return summarize(records, t0, last_start)


CSV_KEYS = {
    "Inferences/Second": ("pa_requests_per_s", 1.0),
    "Response Throughput": ("pa_responses_per_s", 1.0),
    "p50 latency": ("pa_latency_ms_p50", 1e-3),
    "p90 latency": ("pa_latency_ms_p90", 1e-3),
    "p95 latency": ("pa_latency_ms_p95", 1e-3),
    "p99 latency": ("pa_latency_ms_p99", 1e-3),
    "Avg latency": ("pa_latency_ms_mean", 1e-3),
    "Server Queue": ("pa_server_queue_ms", 1e-3),
    "Server Compute Infer": ("pa_server_compute_infer_ms", 1e-3),
}


def point_result(concurrency: int, row: dict | None, records: list[RequestRecord], cfg: dict,
                 command: list[str], log_tail: str, rc: int) -> dict:
    m: dict = {"concurrency": concurrency, "request_rate": None, "input_len": cfg["input_len"],
               "output_len": cfg["output_len"]}
    m.update(metrics_from_export(records, cfg["input_len"] if cfg.get("exact_input_len") else None))
    for col, (key, scale) in CSV_KEYS.items():
        if row and isinstance(row.get(col), (int, float)):
            m[key] = row[col] * scale
    errors = [r.error for r in records if r.error]
    ok = bool(records) and rc == 0
    # perf_analyzer cycles through the input file: past num_prompts requests, prompts repeat and
    # hit the prefix cache.
    m["prompts_repeated"] = len(records) > cfg.get("num_prompts", len(records))
    return {
        "kind": "perf_analyzer", "label": f"pa-c{concurrency}", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "git_commit": git_commit(), "config": cfg, "command": command, "returncode": rc,
        "metrics": m, "csv": row or {}, "ok": ok,
        "errors": {"count": len(errors), "first": errors[:5], **({} if ok else {"log_tail": log_tail[-2000:]})},
    }


# ------------------------------------------------------------------------------------- running


def run_point(binary: str, url: str, model: str, input_file: Path, work: Path, concurrency_range: str,
              measurement_interval_ms: int, stability: float, max_trials: int, timeout: float,
              extra: list[str] | None = None) -> tuple[int, list[str], str, Path, Path]:
    tag = concurrency_range.replace(":", "-")
    csv_path, export_path = work / f"pa_c{tag}.csv", work / f"pa_c{tag}_export.json"
    cmd = [binary, "-m", model, "-u", url, "-i", "grpc", "--streaming", "--async",
           "--concurrency-range", concurrency_range, "--input-data", str(input_file),
           "-p", str(measurement_interval_ms), "-s", str(stability), "-r", str(max_trials),
           "-f", str(csv_path), "--verbose-csv", "--profile-export-file", str(export_path),
           *(extra or [])]
    try:
        p = subprocess.run(cmd, env=pa_env(), capture_output=True, text=True, timeout=timeout)
        rc, log = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc = 124
        log = ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")) \
            + f"\n[timed out after {timeout}s]"
    (work / f"pa_c{tag}.log").write_text(log)
    return rc, cmd, log, csv_path, export_path


def run_perf_analyzer(url: str, model: str = "llm", input_len: int = 128, output_len: int = 512,
                      concurrencies=(1, 8), tokenizer: str | None = None, work_dir: str | Path | None = None,
                      inputs_dir: str | Path | None = None, num_prompts: int = 512,
                      measurement_interval_ms: int = 4000, stability: float = 999.0, max_trials: int = 3,
                      timeout_per_point: float = 120.0, binary: str | None = None, linear_range: str | None = None,
                      extra: list[str] | None = None) -> list[dict]:
    """One result per concurrency (see the module doc). Raises RuntimeError if the binary cannot run."""
    from perf.pa_inputs import write_inputs
    path, why = check_binary(binary)
    if path is None:
        raise RuntimeError(why)
    work = Path(work_dir or tempfile.mkdtemp(prefix="pa-"))
    work.mkdir(parents=True, exist_ok=True)
    input_file = write_inputs(input_len, output_len, inputs_dir or work, num_prompts=num_prompts,
                              tokenizer=tokenizer)
    cfg = {"url": url, "model": model, "input_len": input_len, "output_len": output_len,
           "measurement_interval_ms": measurement_interval_ms, "stability_percentage": stability,
           "max_trials": max_trials, "input_data": str(input_file), "num_prompts": num_prompts, "perf_analyzer": why,
           "exact_input_len": tokenizer is not None}
    ranges = [linear_range] if linear_range else [f"{c}:{c}:1" for c in concurrencies]
    results = []
    for rng in ranges:
        rc, cmd, log, csv_path, export_path = run_point(path, url, model, input_file, work, rng,
                                                        measurement_interval_ms, stability, max_trials,
                                                        timeout_per_point, extra)
        rows = parse_csv(csv_path) if csv_path.is_file() else []
        try:
            export = json.loads(export_path.read_text()) if export_path.is_file() else {}
        except ValueError:
            export = {}
        experiments = records_from_export(export)
        if not experiments:
            # No profile export (perf_analyzer failed writing it): keep its CSV numbers, if any.
            if rows:
                for row in rows:
                    r = point_result(int(row.get("Concurrency", 0)), row, [], cfg, cmd, log, rc if rc else 1)
                    r["errors"]["first"] = ["no profile export: only perf_analyzer's CSV numbers"]
                    results.append(r)
            else:
                results.append(point_result(int(rng.split(":")[0]), None, [], cfg, cmd, log, rc if rc else 1))
            continue
        by_conc = {int(r.get("Concurrency", -1)): r for r in rows}
        for exp, recs in experiments:
            c = int(exp.get("value", rng.split(":")[0]))
            results.append(point_result(c, by_conc.get(c), recs, cfg, cmd, log, rc))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.run_perf_analyzer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=f"127.0.0.1:{os.environ.get('GRPC_PORT', '8001')}", help="gRPC host:port")
    ap.add_argument("--model", default="llm")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=512)
    ap.add_argument("--concurrency", default="1,8", help="comma-separated; one perf_analyzer run each")
    ap.add_argument("--range", dest="linear_range", default=None,
                    help="START:END:STEP: one perf_analyzer --concurrency-range sweep instead")
    ap.add_argument("--tokenizer", "--model-dir", dest="tokenizer", default=None)
    ap.add_argument("--num-prompts", type=int, default=512,
                    help="distinct prompts; perf_analyzer cycles through them, and a repeated prompt hits "
                         "the server's prefix cache (lower TTFT)")
    ap.add_argument("--measurement-interval", type=int, default=4000, help="ms per window")
    ap.add_argument("--stability", type=float, default=999.0,
                    help="PA -s; the default accepts the first 3 windows (bounded time)")
    ap.add_argument("--max-trials", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per point")
    ap.add_argument("--work-dir", default=None, help="CSV/export/log files (default: a temp dir)")
    ap.add_argument("--inputs-dir", default=None, help="where inputs_<in>_<out>.json goes (default: work dir)")
    ap.add_argument("--binary", default=None)
    ap.add_argument("--out", default=None)
    args, extra = ap.parse_known_args(argv)
    try:
        results = run_perf_analyzer(args.url, args.model, args.input_len, args.output_len,
                                    [int(c) for c in args.concurrency.split(",")], args.tokenizer,
                                    args.work_dir, args.inputs_dir, args.num_prompts, args.measurement_interval,
                                    args.stability, args.max_trials, args.timeout, args.binary,
                                    args.linear_range, extra)
    except RuntimeError as e:
        print(f"perf_analyzer cannot run: {e}", file=sys.stderr)
        return 2
    from perf.loadgen import format_table
    print(format_table(results))
    for r in results:
        if not r["ok"]:
            print(f"{r['label']}: perf_analyzer rc={r['returncode']}\n{r['errors'].get('log_tail', '')}",
                  file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0 if results and all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
