"""The serving benchmark of one device run (perf/run_gpu_bench.sh calls this; SMOKE=1 runs it on CPU).

    python -m perf.gpu_bench --out DIR [--smoke] [--deadline 480]

Phases, each with its own time budget, in order of importance (a phase that no longer fits in the
remaining time is skipped and listed in serving.json's notes):
  1. model     tools.random_llama --size llama-3.2-1b --dtype bfloat16 --device cuda (smoke: tiny, fp32, cpu)
  2. offline   perf/bench_offline.py: in-process engine, same shapes and concurrencies as served,
               plus device copy bandwidth and weight bytes (batch-1 decode roofline)
  3. server    the real tritonserver, one KIND_GPU instance (smoke: KIND_CPU), via tests/conftest helpers
  4. loadgen   perf/loadgen.py at each concurrency for each shape: 2 requests per worker (at least 8),
               at most --point-seconds of issuing, then --drain-seconds for in-flight requests
  5. perf_analyzer on the primary shape at a couple of concurrencies (cross-checks the loadgen)
  6. hf        perf/hf_baseline.py: transformers generate at batch 1 and 32 (short output, see JSON)
  7. report    serving.json (flat metrics + ratios), report.md, throughput/ttft/itl PNGs
serving.json is rewritten after every phase, so a run cut short still leaves what it measured.
Keys: served_c{C}_* / offline_c{C}_* / pa_c{C}_* are the primary shape (the first of --shapes);
served_in{I}_out{O}_c{C}_* name every shape.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from perf.meta import git_commit  # noqa: E402

FULL = dict(size="llama-3.2-1b", dtype="bfloat16", device="cuda", kind="KIND_GPU",
            shapes=[(128, 512), (1024, 128)], concurrency=[1, 8, 32, 128, 256],
            pa_concurrency=[1, 32], pa_interval_ms=4000, hf_batches=[1, 32], hf_output_len=64,
            point_seconds=12.0, drain_seconds=8.0, offline_budget=80.0, server_params={"max_model_len": "2048"})
SMOKE = dict(size="tiny", dtype="float32", device="cpu", kind="KIND_CPU",
             shapes=[(64, 32), (256, 16)], concurrency=[1, 4],
             pa_concurrency=[1, 4], pa_interval_ms=2000, hf_batches=[1, 32], hf_output_len=16,
             point_seconds=6.0, drain_seconds=10.0, offline_budget=60.0,
             server_params={"max_model_len": "1024", "num_kv_blocks": "512", "max_num_seqs": "32"})

LATENCY_KEYS = {"ttft_ms_p50": "ttft_p50_ms", "ttft_ms_p90": "ttft_p90_ms", "ttft_ms_p99": "ttft_p99_ms",
                "itl_ms_p50": "itl_p50_ms", "itl_ms_p90": "itl_p90_ms", "itl_ms_p99": "itl_p99_ms",
                "tpot_ms_mean": "tpot_mean_ms", "e2e_ms_p50": "e2e_p50_ms", "e2e_ms_p99": "e2e_p99_ms"}
RATE_KEYS = {"output_tokps": "output_tokps", "steady_output_tokps": "steady_output_tokps",
             "requests_per_s": "requests_per_s"}


def device_name(smoke: bool) -> str:
    if smoke:
        return "cpu (smoke)"
    try:
        out = subprocess.check_output(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], text=True,
                                      timeout=20)
        return out.strip().splitlines()[0]
    except Exception:
        return "unknown"


def flat_point(prefix: str, m: dict) -> dict:
    """loadgen/PA metrics of one point -> flat serving.json keys with the given prefix."""
    out = {}
    for src, dst in {**RATE_KEYS, **LATENCY_KEYS}.items():
        if m.get(src) is not None:
            out[f"{prefix}_{dst}"] = m[src]
    out[f"{prefix}_requests_ok"] = m.get("requests_ok")
    out[f"{prefix}_errors"] = m.get("requests_failed", 0)
    if m.get("client_cpu_util") is not None:
        out[f"{prefix}_client_cpu_util"] = m["client_cpu_util"]
    return out


def ratios(metrics: dict, shapes, concurrency) -> dict:
    r = {}

    def div(a, b):
        x, y = metrics.get(a), metrics.get(b)
        return x / y if isinstance(x, (int, float)) and isinstance(y, (int, float)) and y else None

    for c in concurrency:
        r[f"served_vs_offline_c{c}"] = div(f"served_c{c}_output_tokps", f"offline_c{c}_output_tokps")
        for i, o in shapes:
            r[f"served_vs_offline_in{i}_out{o}_c{c}"] = div(f"served_in{i}_out{o}_c{c}_output_tokps",
                                                            f"offline_in{i}_out{o}_c{c}_output_tokps")
        r[f"pa_vs_loadgen_c{c}_output_tokps"] = div(f"pa_c{c}_output_tokps", f"served_c{c}_output_tokps")
    r["offline_c1_vs_roofline"] = div("offline_c1_output_tokps", "roofline_bs1_tokps")
    r["served_c1_vs_roofline"] = div("served_c1_output_tokps", "roofline_bs1_tokps")
    for b in (1, 32):
        r[f"served_c{b}_vs_hf_bs{b}"] = div(f"served_c{b}_output_tokps", f"hf_bs{b}_output_tokps")
        r[f"offline_c{b}_vs_hf_bs{b}"] = div(f"offline_c{b}_output_tokps", f"hf_bs{b}_output_tokps")
    return {k: v for k, v in r.items() if v is not None}


class Bench:
    def __init__(self, out: Path, smoke: bool, deadline_s: float, plan: dict, argv: list[str]):
        self.out = out
        self.smoke = smoke
        self.plan = plan
        self.t0 = time.monotonic()
        self.deadline = self.t0 + deadline_s
        self.metrics: dict = {}
        self.notes: list[str] = []
        self.phases: dict[str, dict] = {}
        self.command = " ".join(["python", "-m", "perf.gpu_bench"] + argv)
        if smoke:
            self.command = "SMOKE=1 bash perf/run_gpu_bench.sh (" + self.command + ")"
        else:
            self.command = "bash perf/run_gpu_bench.sh (" + self.command + ")"
        self.device = device_name(smoke)
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
        self.model_dir: Path | None = None
        self.server = None

    # -- bookkeeping
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, msg: str) -> None:
        print(f"[bench {time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        self.log("NOTE " + msg)

    def phase(self, name: str, need_s: float, fn) -> bool:
        if self.left() < need_s:
            self.phases[name] = {"status": "skipped", "seconds": 0.0}
            self.note(f"phase {name} skipped: {self.left():.0f}s left, it needs ~{need_s:.0f}s")
            self.save()
            return False
        self.log(f"=== {name} ({self.left():.0f}s left)")
        t = time.monotonic()
        status = "ok"
        try:
            fn()
        except Exception as e:
            import traceback
            status = f"failed: {type(e).__name__}: {e}"
            self.note(f"phase {name} failed: {type(e).__name__}: {e}")
            traceback.print_exc()
        dt = time.monotonic() - t
        self.phases[name] = {"status": status, "seconds": round(dt, 1)}
        self.metrics[f"phase_{name}_s"] = round(dt, 1)
        self.log(f"=== {name}: {status} in {dt:.1f}s")
        self.save()
        return status == "ok"

    def save(self) -> None:
        shapes, conc = self.plan["shapes"], self.plan["concurrency"]
        self.metrics.update(ratios(self.metrics, shapes, conc))
        doc = {"device": self.device, "command": self.command, "git_commit": git_commit(),
               "date": time.strftime("%Y-%m-%d"), "metrics": self.metrics,
               "notes": self.notes + [
                   f"primary shape (unsuffixed keys): input {shapes[0][0]} / output {shapes[0][1]} tokens",
                   f"hf_* baseline: input 128, output {self.plan['hf_output_len']} tokens "
                   "(shorter than the served runs, to fit the time budget)",
                   "served_* output_tokps: all streamed tokens / (first send -> last response), 2 requests per "
                   "worker; ratios are served / offline at the same shape and concurrency"],
               "phases": self.phases}
        (self.out / "serving.json").write_text(json.dumps(doc, indent=2))

    def run_cmd(self, cmd: list[str], timeout: float, log_name: str) -> int:
        self.log("$ " + " ".join(cmd))
        log_path = self.out / log_name
        with open(log_path, "w") as log:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                 start_new_session=True)
            t_end = time.monotonic() + timeout
            try:
                for line in p.stdout:
                    log.write(line)
                    sys.stdout.write("    " + line)
                    sys.stdout.flush()
                    if time.monotonic() > t_end:
                        break
                p.wait(timeout=max(1.0, t_end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            if p.poll() is None:
                os.killpg(p.pid, 15)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, 9)
                    p.wait()
                raise TimeoutError(f"{cmd[1] if len(cmd) > 1 else cmd[0]} ran past {timeout:.0f}s (see {log_name})")
        if p.returncode != 0:
            raise RuntimeError(f"exit {p.returncode} (see {log_name})")
        return p.returncode

    # -- phases
    def build_model(self) -> None:
        d = self.tmp / f"model-{self.plan['size']}"
        self.run_cmd([sys.executable, "-m", "tools.random_llama", "--size", self.plan["size"], "--dtype",
                      self.plan["dtype"], "--device", self.plan["device"], "--out", str(d)],
                     timeout=min(200, self.left()), log_name="model_log.txt")
        self.model_dir = d

    def offline(self) -> None:
        shapes = ",".join(f"{i}x{o}" for i, o in self.plan["shapes"])
        conc = ",".join(str(c) for c in self.plan["concurrency"])
        path = self.out / "offline.json"
        budget = min(self.plan["offline_budget"], max(20.0, self.left() - 300))
        try:
            self.run_cmd([sys.executable, "perf/bench_offline.py", "--model-dir", str(self.model_dir),
                          "--shapes", shapes, "--concurrency", conc, "--device", self.plan["device"],
                          "--max-model-len", self.plan["server_params"]["max_model_len"],
                          "--budget", str(budget), "--out", str(path)],
                         timeout=budget + 90, log_name="offline_log.txt")
        finally:
            if path.is_file():
                self.metrics.update(json.loads(path.read_text())["metrics"])

    def start_server(self) -> None:
        from perf.serving import start
        params = dict(self.plan["server_params"])
        instances = self.plan.get("instances", 1)
        if instances > 1 and self.plan["kind"] == "KIND_GPU":
            # Instances sharing a GPU split it: each engine sizes its KV cache from its share.
            params.setdefault("kv_cache_memory_fraction", f"{0.9 / instances:.3f}")
        self.server = start(self.model_dir, self.plan["kind"], self.tmp / "server",
                            timeout=min(300.0, self.left() - 60), instances=instances, **params)
        self.metrics["server_instances"] = instances
        self.log(f"server up: grpc {self.server.grpc_url}")

    def stop_server(self) -> None:
        if self.server is None:
            return
        from perf.serving import stop
        try:
            stop(self.server)
        finally:
            try:
                shutil.copy(self.server.log_path, self.out / "tritonserver_log.txt")
            except OSError:
                pass
            self.server = None

    def loadgen(self, shape: tuple[int, int]) -> None:
        from perf.loadgen import format_table, run_load
        i, o = shape
        results = []
        path = self.out / f"loadgen_in{i}_out{o}.json"
        for c in self.plan["concurrency"]:
            need = self.plan["point_seconds"] + self.plan["drain_seconds"] + 15
            if self.left() < need + 60:
                self.note(f"loadgen in{i}/out{o} c{c} skipped: {self.left():.0f}s left")
                continue
            r = run_load(self.server.grpc_url, self.server.model, concurrency=c, input_len=i, output_len=o,
                         num_requests=max(8, 2 * c), duration=self.plan["point_seconds"],
                         drain_timeout=self.plan["drain_seconds"], warmup=min(c, 32), warmup_timeout=30.0,
                         tokenizer=str(self.model_dir), processes=None, progress=False,
                         metrics_url=self.server.metrics_url,
                         request_timeout=self.plan["point_seconds"] + self.plan["drain_seconds"] + 30)
            results.append(r)
            path.write_text(json.dumps(results, indent=2))
            m = r["metrics"]
            self.metrics.update(flat_point(f"served_in{i}_out{o}_c{c}", m))
            if shape == self.plan["shapes"][0]:
                self.metrics.update(flat_point(f"served_c{c}", m))
            print(format_table([r]), flush=True)
            if r["errors"]["count"]:
                self.note(f"loadgen in{i}/out{o} c{c}: {r['errors']['count']} errors, e.g. {r['errors']['first'][:2]}")
            if m.get("output_len_mismatch"):
                self.note(f"loadgen in{i}/out{o} c{c}: {m['output_len_mismatch']} requests did not get {o} tokens")
            if m.get("input_len_mismatch"):
                self.note(f"loadgen in{i}/out{o} c{c}: {m['input_len_mismatch']} prompts were not {i} tokens "
                          "as the server counted them")
            if not m.get("requests_ok"):
                self.note(f"loadgen in{i}/out{o} c{c}: no request succeeded; the rest of this shape is skipped "
                          f"(errors: {r['errors']})"[:600])
                break
            if (m.get("client_cpu_util") or 0) > 0.9:
                self.note(f"loadgen in{i}/out{o} c{c}: client CPU {m['client_cpu_util']:.2f}: the client may "
                          "have limited this point")
            self.save()

    def perf_analyzer(self) -> None:
        from perf.run_perf_analyzer import check_binary, run_perf_analyzer
        path, why = check_binary()
        if path is None:
            self.note(f"perf_analyzer not run: {why}")
            return
        i, o = self.plan["shapes"][0]
        results = run_perf_analyzer(self.server.grpc_url, self.server.model, i, o, self.plan["pa_concurrency"],
                                    tokenizer=str(self.model_dir), work_dir=self.out / "perf_analyzer",
                                    measurement_interval_ms=self.plan["pa_interval_ms"], max_trials=3,
                                    timeout_per_point=min(90.0, max(30.0, self.left() / 3)))
        (self.out / f"pa_in{i}_out{o}.json").write_text(json.dumps(results, indent=2))
        for r in results:
            c = r["metrics"]["concurrency"]
            if not r["ok"]:
                self.note(f"perf_analyzer c{c} failed (rc {r['returncode']}): {r['errors'].get('log_tail', '')[-300:]}")
                continue
            m = r["metrics"]
            self.metrics.update({k.replace("served_", "pa_", 1): v
                                 for k, v in flat_point(f"served_c{c}", m).items() if "client" not in k})
            for key in ("pa_responses_per_s", "pa_latency_ms_p50", "pa_latency_ms_p99"):
                if m.get(key) is not None:
                    self.metrics[f"pa_c{c}_{key[3:]}"] = m[key]

    def hf(self) -> None:
        path = self.out / "hf_baseline.json"
        budget = max(20.0, min(150.0, self.left() - 40))
        try:
            self.run_cmd([sys.executable, "perf/hf_baseline.py", "--model-dir", str(self.model_dir),
                          "--batches", ",".join(str(b) for b in self.plan["hf_batches"]), "--input-len", "128",
                          "--output-len", str(self.plan["hf_output_len"]), "--device", self.plan["device"],
                          "--budget", str(budget - 30), "--out", str(path)],
                         timeout=budget, log_name="hf_log.txt")
        finally:
            if path.is_file():
                self.metrics.update(json.loads(path.read_text())["metrics"])

    def report(self) -> None:
        from perf.report import load_results, make_report
        self.save()
        paths = make_report(load_results([self.out]), self.out)
        self.log("report: " + ", ".join(paths.values()))

    def summary_table(self) -> str:
        m = self.metrics
        rows = [("point", "out tok/s", "TTFT p50 ms", "TTFT p99", "ITL p50 ms", "ITL p99", "vs offline")]
        for i, o in self.plan["shapes"]:
            for c in self.plan["concurrency"]:
                p = f"served_in{i}_out{o}_c{c}"
                if f"{p}_output_tokps" not in m:
                    continue

                def f(k, spec="{:.1f}"):
                    v = m.get(k)
                    return "-" if v is None else spec.format(v)
                rows.append((f"{i}/{o} c{c}", f(f"{p}_output_tokps"), f(f"{p}_ttft_p50_ms"), f(f"{p}_ttft_p99_ms"),
                             f(f"{p}_itl_p50_ms", "{:.2f}"), f(f"{p}_itl_p99_ms", "{:.2f}"),
                             f(f"served_vs_offline_in{i}_out{o}_c{c}", "{:.2f}")))
        widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
        lines = ["  ".join(x.rjust(w) for x, w in zip(r, widths)) for r in rows]
        extra = [f"{k} = {m[k]:.4g}" for k in ("copy_tbps", "roofline_bs1_tokps", "offline_c1_output_tokps",
                                                "offline_c128_output_tokps", "served_c128_output_tokps",
                                                "served_c256_output_tokps", "hf_bs1_output_tokps",
                                                "hf_bs32_output_tokps", "served_vs_offline_c128",
                                                "offline_c1_vs_roofline", "served_c1_ttft_p50_ms")
                 if isinstance(m.get(k), (int, float))]
        return "\n".join(lines + extra)

    def run(self) -> int:
        skip = set(self.plan.get("skip", ()))
        if not self.phase("model", 30, self.build_model):
            return 1
        if "offline" not in skip:
            self.phase("offline", 60, self.offline)
        if self.phase("server", 60, self.start_server):
            try:
                for shape in self.plan["shapes"]:
                    self.phase(f"loadgen_in{shape[0]}_out{shape[1]}", 45, lambda s=shape: self.loadgen(s))
                if "perf_analyzer" not in skip:
                    self.phase("perf_analyzer", 50, self.perf_analyzer)
            finally:
                self.stop_server()
        if "hf" not in skip:
            self.phase("hf", 45, self.hf)
        self.phase("report", 5, self.report)
        self.save()
        print("\n" + self.summary_table(), flush=True)
        for n in self.notes:
            print("note:", n)
        self.log(f"done; results in {self.out}")
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m perf.gpu_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU, concurrency 1,4")
    ap.add_argument("--deadline", type=float, default=480.0, help="seconds for everything")
    ap.add_argument("--concurrency", default=None, help="override, e.g. 1,8,32,128,256")
    ap.add_argument("--point-seconds", type=float, default=None)
    ap.add_argument("--shapes", default=None, help="override, e.g. 128x512,1024x128")
    ap.add_argument("--instances", type=int, default=1,
                    help="model instances sharing the one device (each its own engine and memory share)")
    ap.add_argument("--skip", default="", help="phases to leave out: offline,perf_analyzer,hf")
    ap.add_argument("--server-param", action="append", default=[], metavar="KEY=VALUE",
                    help="a config.pbtxt parameter for the served model, e.g. engine_process=false")
    args = ap.parse_args(argv)
    plan = dict(SMOKE if args.smoke else FULL)
    if args.shapes:
        plan["shapes"] = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    plan["skip"] = [s for s in args.skip.split(",") if s]
    plan["instances"] = args.instances
    if args.server_param:
        plan["server_params"] = dict(plan["server_params"], **dict(p.split("=", 1) for p in args.server_param))
    if args.concurrency:
        plan["concurrency"] = [int(c) for c in args.concurrency.split(",")]
    if args.point_seconds:
        plan["point_seconds"] = args.point_seconds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(out, args.smoke, args.deadline, plan, argv)
    try:
        return bench.run()
    finally:
        bench.stop_server()
        bench.save()


if __name__ == "__main__":
    sys.exit(main())
