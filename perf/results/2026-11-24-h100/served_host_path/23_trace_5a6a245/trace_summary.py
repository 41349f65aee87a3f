"""Where a request's time to first token goes in the served path, from the trace_patch.diff files.

    python3 trace_summary.py trace/      (adapter.json, stub_loop.json, child.json; CLOCK_MONOTONIC
                                          seconds, the same clock in the stub and the engine process)
Stages: execute() -> admission thread -> sent to the engine process -> received there -> first
token handed to its delivery -> received by the stub -> on_output (delivery thread) = adapter TTFT.
Then, per wave of the closed loop, when the first outputs reached on_output (clusters 3 ms apart).
"""
import json
import statistics
import sys
from pathlib import Path

d = Path(sys.argv[1])
adapter, stub, child = (json.loads((d / f).read_text()) for f in ("adapter.json", "stub_loop.json", "child.json"))
rows = []
for rid, (t_exec, t_admit, t_first) in adapter.items():
    if rid in stub and rid in child and None not in (t_first, t_admit, *stub[rid], *child[rid]):
        (t_sent, t_recv), (t_child, t_emit) = stub[rid], child[rid]
        rows.append((t_admit - t_exec, t_sent - t_admit, t_child - t_sent, t_emit - t_child, t_recv - t_emit,
                     t_first - t_recv, t_first - t_exec))
names = ["execute -> admission", "admission -> sent", "sent -> engine process", "engine: arrival -> first token",
         "engine process -> stub", "stub received -> on_output", "total (adapter TTFT)"]
print(f"{len(rows)} requests; ms")
for i, name in enumerate(names):
    v = sorted(r[i] * 1000 for r in rows)
    print(f"  {name:32s} mean {statistics.mean(v):7.2f}  p50 {statistics.median(v):7.2f}  "
          f"p90 {v[int(0.9 * len(v))]:7.2f}  max {v[-1]:7.2f}")
t0 = min(v[0] for v in adapter.values())
arrivals = sorted((v[0] - t0, v[2] - t0) for v in adapter.values() if v[2] is not None)
waves: list[list] = []
for a in arrivals:   # a new wave starts after a gap of > 300 ms between execute() calls
    if waves and a[0] - waves[-1][-1][0] < 0.3:
        waves[-1].append(a)
    else:
        waves.append([a])
for wave in waves:
    firsts = sorted(f for _, f in wave)
    groups: list[list[float]] = []
    for t in firsts:
        if groups and t - groups[-1][-1] < 0.003:
            groups[-1].append(t)
        else:
            groups.append([t])
    print(f"wave at {wave[0][0] * 1000:7.1f} ms: {len(wave)} requests, execute() spread "
          f"{(wave[-1][0] - wave[0][0]) * 1000:.0f} ms; first outputs reached on_output in rounds "
          + ", ".join(f"{g[0] * 1000:.0f} ms x{len(g)} ({(g[-1] - g[0]) * 1000:.0f} ms)" for g in groups))
