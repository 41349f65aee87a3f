"""Where does a batch-1 decode step spend the time its CUDA graph does not? (GPU only; a
diagnostic, not a benchmark.)

    python3 perf/diag_step_gaps.py --model-dir DIR --out DIR [--tag NAME] [--interior]

Runs a batch-1 greedy decode under torch.profiler (CUDA activity only) and lays the GPU's
activities of each step on one timeline: the layers' kernels (the "graph span": from the first
linear or attention kernel to the lm_head), the work around them (the inputs' copy, and kernels
captured in the graph but outside that span: the step's input kernel, the embedding, greedy
sampling) and the idle gaps between them. Prints, and writes
to DIR/step_gaps_<tag>.json, per-step medians: step period, graph span, time in kernels outside
the graph, time in copies, idle time, and the median duration of each activity outside the graph.
The JSON also sums the kernels inside the graph by name (count, busy time, gaps before them, per
step); --interior prints those sums and one step's kernels inside the graph in order (with PDL a
kernel starts before its predecessor ends, so read a layer's cost from the start times).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perf.meta import git_commit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--out", default="perf/results/latest")
    ap.add_argument("--tag", default="bs1")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--interior", action="store_true",
                    help="also list one step's kernels inside the graph and sum them by name")
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from engine import EngineConfig, LLMEngine, SamplingParams
    engine = LLMEngine(EngineConfig(model_dir=args.model_dir, device="cuda", max_model_len=4096))
    engine.add_request("d", list(range(100, 228)), SamplingParams(max_tokens=2000, temperature=0, ignore_eos=True))
    for _ in range(50):   # past prefill, warm
        engine.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            engine.step()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)
    # Every step runs the sampler's chunk kernel once, after the lm_head: it delimits the steps.
    marks = [i for i, e in enumerate(events) if "_chunk_kernel" in e.name]
    per_step, around, inside = [], {}, {}
    interior: list[str] = []
    timeline: list[str] = []
    for n, (a, b) in enumerate(zip(marks, marks[1:])):
        window = events[a:b]
        t0 = window[0].time_range.start
        # The graph: from the first attention-or-linear kernel to the last linear (the lm_head).
        in_graph = [i for i, e in enumerate(window) if any(k in e.name for k in GRAPH_KERNELS)]
        g0, g1 = (window[in_graph[0]].time_range.start, window[in_graph[-1]].time_range.end) if in_graph else (t0, t0)
        busy_outside, idle, end = 0.0, 0.0, t0
        for i, e in enumerate(window):
            s_, f_ = e.time_range.start, e.time_range.end
            if s_ > end:
                idle += s_ - end
            if not (in_graph and in_graph[0] <= i <= in_graph[-1]):
                busy_outside += f_ - s_
                around.setdefault(e.name[:80], []).append(f_ - s_)
            end = max(end, f_)
        per_step.append({"period_us": events[b].time_range.start - t0, "graph_span_us": g1 - g0,
                         "outside_graph_busy_us": busy_outside, "idle_us": idle})
        if in_graph:
            prev_end = window[in_graph[0]].time_range.start
            for i in range(in_graph[0], in_graph[-1] + 1):
                e = window[i]
                s_, f_ = e.time_range.start, e.time_range.end
                rec = inside.setdefault(e.name[:60], {"count": 0, "busy_us": 0.0, "gap_before_us": 0.0})
                rec["count"] += 1
                rec["busy_us"] += f_ - s_
                rec["gap_before_us"] += max(0.0, s_ - prev_end)
                if n == 1 and args.interior:
                    interior.append(f"{s_ - g0:9.1f} {f_ - s_:7.2f} {max(0.0, s_ - prev_end):6.2f}  {e.name[:60]}")
                prev_end = max(prev_end, f_)
        if n < 2:
            timeline += [f"{e.time_range.start - t0:9.1f} {e.time_range.end - e.time_range.start:7.2f}  {e.name[:70]}"
                         for i, e in enumerate(window)
                         if not (in_graph and in_graph[0] < i < in_graph[-1])]
    med = {k: statistics.median(r[k] for r in per_step) for k in per_step[0]}
    around_med = {k: statistics.median(v) for k, v in around.items()}
    print("per step (median us):", {k: round(v, 1) for k, v in med.items()})
    for k, v in sorted(around_med.items(), key=lambda kv: -kv[1]):
        print(f"  outside the span: {v:7.2f} us  x{len(around[k]) / len(per_step):.1f}/step  {k}")
    print("two steps, graph interior left out (start us, duration us, name):")
    print("\n".join(timeline))
    steps = max(1, len(per_step))
    inside_per_step = {k: {f: v / steps for f, v in r.items()} for k, r in inside.items()}
    if args.interior:
        print("one step inside the graph (start us, duration us, gap before us, name):")
        print("\n".join(interior))
        print("inside the graph, per step (kernels, busy us, gaps before them us):")
        for k, r in sorted(inside_per_step.items(), key=lambda kv: -kv[1]["busy_us"]):
            print(f"  {r['count']:6.1f} {r['busy_us']:8.1f} {r['gap_before_us']:7.1f}  {k}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"step_gaps_{args.tag}.json").write_text(json.dumps({
        "device": torch.cuda.get_device_name(), "command": " ".join(["python3"] + sys.argv),
        "git_commit": git_commit(), "metrics": med, "outside_graph_us": around_med,
        "inside_graph_per_step": inside_per_step,
        "timeline": timeline}, indent=2))


GRAPH_KERNELS = ("_small_linear_kernel", "_paged_attention_kernel", "_merge_splits_kernel",
                 "_reduce_splits_kernel", "_rms_norm_kernel", "_rope", "gemv", "gemm", "embedding")


if __name__ == "__main__":
    main()
