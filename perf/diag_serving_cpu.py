"""Where does the served path spend its CPU? A diagnostic (not a benchmark) for the gap between
served and offline throughput:

    python3 -m perf.diag_serving_cpu --model-dir DIR --out DIR [--concurrency 128] [--py-spy PATH]

Starts the real tritonserver on the model (KIND_GPU when CUDA is there, max_model_len 2048 as in
perf/gpu_bench.py), runs the load generator at one concurrency, and while the load is at its full
level samples, for every process of the server's tree (tritonserver, the backend stub, the engine
process), the CPU time of each thread from /proc (user + system, as a share of one core). With
--py-spy it also records, non-blocking, the Python stacks of the stub and of the engine process:
`<proc>_gil.txt` holds only samples of the thread holding the GIL (who owns the interpreter),
`<proc>_cpu.txt` the threads that are running (idle ones left out), `<proc>_wall.txt` every
thread, idle or not (where wall time goes: blocked sends, waits, rests), all py-spy "raw" collapsed
stacks, one line per stack and thread. The summary (stdout and summary.json) ranks threads by CPU
and, per profile, each thread's share of samples and its top functions by self samples.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TICK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def process_tree(root: int) -> dict[int, str]:
    """pid -> short label (command name + the module for python processes)."""
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [c.decode(errors="replace") for c in cmd if c]
        label = Path(words[0]).name if words else str(pid)
        if "-m" in words:
            label += " -m " + words[words.index("-m") + 1]
        tree[pid] = label
        todo += children(pid)
    return tree


def thread_times(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (thread name, CPU seconds so far)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def sample_threads(pids: dict[int, str], window_s: float) -> list[dict]:
    before = {pid: thread_times(pid) for pid in pids}
    t0 = time.perf_counter()
    time.sleep(window_s)
    after = {pid: thread_times(pid) for pid in pids}
    wall = time.perf_counter() - t0
    rows = []
    for pid, label in pids.items():
        for tid, (name, cpu) in after[pid].items():
            used = cpu - before[pid].get(tid, (name, 0.0))[1]
            rows.append({"pid": pid, "process": label, "tid": tid, "thread": name,
                         "cpu_share": used / wall})
    rows.sort(key=lambda r: -r["cpu_share"])
    return rows


def python_thread_names(py_spy: str, pid: int) -> dict[int, str]:
    """tid -> Python thread name, from `py-spy dump` (Python 3.12 does not name OS threads)."""
    try:
        text = subprocess.run([py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    names = {}
    for line in text.splitlines():
        if line.startswith("Thread "):   # Thread 1234 (idle): "llm-engine"
            parts = line.split()
            try:
                names[int(parts[1], 0)] = line.split('"')[1]
            except (ValueError, IndexError):
                pass
    return names


def summarize_profile(path: Path, top: int = 12) -> dict:
    """Per thread: share of samples, top functions by self samples, and inclusive samples."""
    per_thread: Counter = Counter()
    self_time: dict[str, Counter] = defaultdict(Counter)
    incl: dict[str, Counter] = defaultdict(Counter)
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames[0]
        total += n
        per_thread[thread] += n
        if len(frames) > 1:
            self_time[thread][frames[-1]] += n
            for f in set(frames[1:]):
                incl[thread][f] += n
    return {"samples": total,
            "threads": {t: {"samples": n, "share": n / total if total else 0.0,
                            "top_self": self_time[t].most_common(top),
                            "top_inclusive": incl[t].most_common(top)}
                        for t, n in per_thread.most_common()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=512)
    ap.add_argument("--duration", type=float, default=14.0, help="seconds of load")
    ap.add_argument("--delay", type=float, default=3.0, help="seconds after the load starts before sampling")
    ap.add_argument("--window", type=float, default=6.0, help="seconds of sampling")
    ap.add_argument("--py-spy", default=None, help="path to a py-spy binary (optional)")
    ap.add_argument("--param", action="append", default=[], help="config.pbtxt parameter KEY=VALUE")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from perf.loadgen import run_load
    from perf.serving import default_kind, start, stop
    params = {"max_model_len": "2048", **dict(p.split("=", 1) for p in args.param)}
    server = start(args.model_dir, default_kind(), out / "server", **params)
    summary: dict = {"command": " ".join([sys.executable, "-m", "perf.diag_serving_cpu"] + (argv or sys.argv[1:])),
                     "params": params}
    try:
        result: dict = {}
        load = threading.Thread(target=lambda: result.update(run_load(
            server.grpc_url, server.model, concurrency=args.concurrency, input_len=args.input_len,
            output_len=args.output_len, num_requests=None, duration=args.duration, processes=None, warmup=min(args.concurrency, 32),
            warmup_timeout=60.0, drain_timeout=10.0, tokenizer=str(args.model_dir), progress=False,
            request_timeout=args.duration + 60, metrics_url=server.metrics_url)))
        load.start()
        time.sleep(args.delay)
        pids = process_tree(server.process.pid)
        summary["processes"] = {str(p): l for p, l in pids.items()}
        spies = []
        names: dict[int, str] = {}
        if args.py_spy:
            for pid, label in pids.items():
                if "python" not in label and "stub" not in label:
                    continue
                tag = "engine" if "engine.remote" in label else "stub"
                names.update(python_thread_names(args.py_spy, pid))
                for kind, extra in (("gil", ["--gil"]), ("cpu", []), ("wall", ["--idle"])):
                    spies.append(subprocess.Popen(
                        [args.py_spy, "record", "--pid", str(pid), "-d", str(int(args.window)), "-r", "200",
                         "--threads", "--nonblocking", "-f", "raw", "-o", str(out / f"{tag}_{kind}.txt"), *extra],
                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        rows = sample_threads(pids, args.window)
        for r in rows:
            r["python_thread"] = names.get(r["tid"])
        summary["threads"] = [r for r in rows if r["cpu_share"] >= 0.01]
        for p in spies:
            p.wait(timeout=args.window + 30)
        load.join()
        summary["loadgen"] = result.get("metrics", {})
        summary["profiles"] = {f.stem: summarize_profile(f) for kind in ("gil", "cpu", "wall")
                               for f in sorted(out.glob(f"*_{kind}.txt"))}
    finally:
        stop(server)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    m = summary.get("loadgen", {})
    print(f"c{args.concurrency}: {m.get('output_tokps') or 0:.0f} tok/s, TTFT p50 {m.get('ttft_ms_p50') or 0:.1f} ms, "
          f"ITL p50 {m.get('itl_ms_p50') or 0:.2f} ms")
    print("server: " + ", ".join(f"{k[7:]} {v:.2f}" for k, v in m.items() if k.startswith("server_") and isinstance(v, float)))
    print(f"{'process':32s} {'tid':>8s} {'thread':24s} {'cpu':>6s}")
    for r in summary.get("threads", []):
        print(f"{r['process'][:32]:32s} {r['tid']:8d} {(r['python_thread'] or r['thread'])[:24]:24s} {r['cpu_share']:6.2f}")
    for name, prof in summary.get("profiles", {}).items():
        print(f"\n== {name}: {prof['samples']} samples")
        for t, d in list(prof["threads"].items())[:4]:
            print(f"  {t}: {d['share']:.2f}")
            for f, n in d["top_self"][:8]:
                print(f"      {n / prof['samples']:.3f}  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
