"""Markdown tables and PNG plots from benchmark result JSONs.

    python -m perf.report perf/results/2026-11-23-h100/ --out-dir perf/results/2026-11-23-h100/
    python -m perf.report loadgen.json pa.json offline.json hf_baseline.json --out-dir /tmp/report

Reads any mix of: perf/loadgen.py results (one or a list), perf/run_perf_analyzer.py results,
perf/bench_offline.py (kind "offline"), perf/hf_baseline.py (kind "hf_baseline") and flat summaries
({"device", ..., "metrics": {...}} such as serving.json or bench_engine.py's engine_*.json).
Writes report.md and, per plot, a PNG (matplotlib, Agg):
  throughput.png  output tokens/s vs concurrency: served (loadgen, perf_analyzer), offline engine,
                  HF transformers generate (at its batch size), decode roofline B x BW / weight bytes
  ttft.png        TTFT p50 (solid) and p99 (dashed) vs concurrency
  itl.png         ITL p50 (solid) and p99 (dashed) vs concurrency, with the batch-1 floor
                  weight bytes / BW
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# ------------------------------------------------------------------------------------- loading


def _items(obj: Any) -> Iterable[dict]:
    if isinstance(obj, list):
        for x in obj:
            yield from _items(x)
    elif isinstance(obj, dict):
        yield obj


def load_results(paths: Iterable[str | Path]) -> list[dict]:
    """Every result object in the given files and directories (*.json, not recursive)."""
    out = []
    for p in paths:
        p = Path(p)
        files = sorted(p.glob("*.json")) if p.is_dir() else [p]
        for f in files:
            try:
                obj = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            for item in _items(obj):
                item.setdefault("_source", str(f))
                out.append(item)
    return out


def classify(results: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        kind = r.get("kind")
        if kind in ("loadgen", "perf_analyzer", "offline", "hf_baseline"):
            groups[kind].append(r)
        elif isinstance(r.get("metrics"), dict):
            groups["summary"].append(r)
    return groups


def _shape(m: dict) -> tuple[int, int]:
    return int(m.get("input_len") or 0), int(m.get("output_len") or 0)


def served_series(results: list[dict]) -> dict[tuple[int, int], list[dict]]:
    """Fixed-concurrency results by shape, sorted by concurrency (request-rate runs are left out)."""
    series: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for r in results:
        m = r.get("metrics", {})
        if m.get("concurrency"):
            series[_shape(m)].append(m)
    return {k: sorted(v, key=lambda m: m["concurrency"]) for k, v in sorted(series.items())}


def roofline_inputs(groups: dict[str, list[dict]]) -> tuple[float | None, float | None]:
    """(copy TB/s, weight GB) from an offline/engine/summary result, when any has them."""
    copy = weight = None
    for r in groups.get("offline", []) + groups.get("summary", []):
        m = r.get("metrics", {})
        copy = copy or m.get("copy_tbps")
        weight = weight or m.get("weight_gb")
    return copy, weight


# ------------------------------------------------------------------------------------- markdown


def _fmt(v, spec: str = "{:.1f}") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return spec.format(v)
    return str(v)


def served_table(groups: dict[str, list[dict]]) -> str:
    cols = [("concurrency", "conc", "{}"), ("requests_ok", "ok", "{}"), ("requests_failed", "err", "{}"),
            ("output_tokps", "out tok/s", "{:.1f}"), ("steady_output_tokps", "steady tok/s", "{:.1f}"),
            ("requests_per_s", "req/s", "{:.2f}"), ("ttft_ms_p50", "TTFT p50 ms", "{:.1f}"),
            ("ttft_ms_p90", "TTFT p90", "{:.1f}"), ("ttft_ms_p99", "TTFT p99", "{:.1f}"),
            ("itl_ms_p50", "ITL p50 ms", "{:.2f}"), ("itl_ms_p90", "ITL p90", "{:.2f}"),
            ("itl_ms_p99", "ITL p99", "{:.2f}"), ("tpot_ms_mean", "TPOT mean", "{:.2f}"),
            ("e2e_ms_p50", "E2E p50 ms", "{:.0f}"), ("e2e_ms_p99", "E2E p99", "{:.0f}"),
            ("server_generation_tokps", "server tok/s", "{:.1f}"), ("server_running_max", "running max", "{:.0f}"),
            ("server_preemptions", "preempt", "{:.0f}"), ("client_cpu_util", "client cpu", "{:.2f}")]
    lines = []
    for kind, title in (("loadgen", "loadgen"), ("perf_analyzer", "perf_analyzer")):
        for (i, o), ms in served_series(groups.get(kind, [])).items():
            lines.append(f"\n**Served, {title}, input {i} / output {o} tokens**\n")
            lines.append("| " + " | ".join(h for _, h, _ in cols) + " |")
            lines.append("|" + "---:|" * len(cols))
            for m in ms:
                lines.append("| " + " | ".join(_fmt(m.get(k), f) for k, _, f in cols) + " |")
        rate = [r for r in groups.get(kind, []) if r.get("metrics", {}).get("request_rate")]
        if rate:
            lines.append(f"\n**Served, {title}, request rate**\n")
            lines.append("| rate req/s | " + " | ".join(h for _, h, _ in cols[1:]) + " |")
            lines.append("|" + "---:|" * len(cols))
            for r in rate:
                m = r["metrics"]
                lines.append(f"| {m['request_rate']:g} | " + " | ".join(_fmt(m.get(k), f) for k, _, f in cols[1:]) + " |")
    return "\n".join(lines)


def offline_table(groups: dict[str, list[dict]]) -> str:
    lines = []
    for r in groups.get("offline", []):
        lines.append(f"\n**Offline engine ({r.get('device', '?')})**\n")
        lines.append("| input | output | conc | out tok/s | decode tok/s | TTFT p50 ms | seconds |")
        lines.append("|---:|---:|---:|---:|---:|---:|---:|")
        for p in r.get("points", []):
            lines.append(f"| {p['input_len']} | {p['output_len']} | {p['concurrency']} | {_fmt(p['output_tokps'])} | "
                         f"{_fmt(p.get('decode_tokps'))} | {_fmt(p.get('ttft_ms_p50'))} | {_fmt(p.get('duration_s'), '{:.2f}')} |")
        if r.get("skipped"):
            lines.append(f"\nskipped (time budget): {', '.join(r['skipped'])}")
    for r in groups.get("hf_baseline", []):
        lines.append(f"\n**HF transformers generate ({r.get('device', '?')}, {r.get('dtype', '')}, "
                     f"transformers {r.get('transformers', '?')})**\n")
        lines.append("| batch | input | output | out tok/s | seconds |")
        lines.append("|---:|---:|---:|---:|---:|")
        for p in r.get("points", []):
            lines.append(f"| {p['batch']} | {p['input_len']} | {p['output_len']} | {_fmt(p['output_tokps'])} | "
                         f"{_fmt(p['duration_s'], '{:.2f}')} |")
    return "\n".join(lines)


HEADLINE = ("served_c1_ttft_p50_ms", "served_c1_itl_p50_ms", "served_c1_output_tokps", "served_c32_output_tokps",
            "served_c128_output_tokps", "served_c256_output_tokps", "served_c256_ttft_p50_ms",
            "served_c256_itl_p50_ms", "offline_c1_output_tokps", "offline_c128_output_tokps",
            "offline_c256_output_tokps", "served_vs_offline_c1", "served_vs_offline_c128", "served_vs_offline_c256",
            "hf_bs1_output_tokps", "hf_bs32_output_tokps", "hf_output_len", "copy_tbps", "weight_gb",
            "roofline_bs1_tokps", "offline_c1_vs_roofline", "served_c1_vs_roofline")


def summary_table(groups: dict[str, list[dict]]) -> str:
    lines = []
    for r in groups.get("summary", []):
        head = ", ".join(f"{k}: {r[k]}" for k in ("device", "date", "git_commit") if r.get(k))
        lines.append(f"\n**{Path(r.get('_source', 'summary')).name}** ({head})\n")
        if r.get("command"):
            lines.append(f"`{r['command']}`\n")
        metrics = r["metrics"]
        top = [k for k in HEADLINE if k in metrics]
        rest = [k for k in metrics if k not in top]
        lines.append("| metric | value |")
        lines.append("|---|---:|")
        for k in top or rest:
            lines.append(f"| {k} | {_fmt(metrics[k], '{:.4g}')} |")
        if top and rest:
            lines.append(f"\n<details><summary>all {len(metrics)} metrics</summary>\n")
            lines.append("| metric | value |")
            lines.append("|---|---:|")
            for k in rest:
                lines.append(f"| {k} | {_fmt(metrics[k], '{:.4g}')} |")
            lines.append("\n</details>")
        for note in r.get("notes", []):
            lines.append(f"- {note}")
    return "\n".join(lines)


def markdown(groups: dict[str, list[dict]], plots: dict[str, str]) -> str:
    parts = ["# Benchmark report\n"]
    s = summary_table(groups)
    if s:
        parts.append("## Summary\n" + s)
    t = served_table(groups)
    if t:
        parts.append("\n## Served (tritonserver, gRPC streaming)\n"
                     "TTFT: send -> first token; ITL: between tokens (a response's gap split over its tokens); "
                     "TPOT: (E2E - TTFT) / (tokens - 1) per request; out tok/s: all tokens / (first send -> last "
                     "response); steady: while the full concurrency was held.\n" + t)
    o = offline_table(groups)
    if o:
        parts.append("\n## Baselines\n" + o)
    if plots:
        parts.append("\n## Plots\n" + "\n".join(f"![{name}]({Path(path).name})" for name, path in plots.items()))
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _xaxis(ax, xs: list[int]) -> None:
    ax.set_xscale("log", base=2)
    if xs:
        ticks = sorted(set(xs))
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlabel("concurrency (requests in flight; batch size for HF/offline)")
    ax.grid(True, which="both", alpha=0.3)


def plot_throughput(groups, out: Path) -> str | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    xs: list[int] = []
    drawn = False
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    shapes = sorted({s for k in ("loadgen", "perf_analyzer") for s in served_series(groups.get(k, []))} |
                    {(p["input_len"], p["output_len"]) for r in groups.get("offline", []) for p in r.get("points", [])})
    color = {s: colors[i % len(colors)] for i, s in enumerate(shapes)}
    for (i, o), ms in served_series(groups.get("loadgen", [])).items():
        c = [m["concurrency"] for m in ms]
        ax.plot(c, [m.get("output_tokps") or 0 for m in ms], "o-", color=color[(i, o)], label=f"served {i}/{o} (loadgen)")
        xs += c
        drawn = True
    for (i, o), ms in served_series(groups.get("perf_analyzer", [])).items():
        c = [m["concurrency"] for m in ms]
        ax.plot(c, [m.get("output_tokps") or 0 for m in ms], "s", ms=8, mfc="none", color=color[(i, o)],
                label=f"served {i}/{o} (perf_analyzer)")
        xs += c
        drawn = True
    for r in groups.get("offline", []):
        by_shape = defaultdict(list)
        for p in r.get("points", []):
            by_shape[(p["input_len"], p["output_len"])].append(p)
        for (i, o), ps in sorted(by_shape.items()):
            ps.sort(key=lambda p: p["concurrency"])
            c = [p["concurrency"] for p in ps]
            ax.plot(c, [p["output_tokps"] for p in ps], "^--", color=color.get((i, o)), label=f"offline engine {i}/{o}")
            xs += c
            drawn = True
    for r in groups.get("hf_baseline", []):
        ps = sorted(r.get("points", []), key=lambda p: p["batch"])
        if ps:
            ax.plot([p["batch"] for p in ps], [p["output_tokps"] for p in ps], "D:", color="gray",
                    label=f"HF generate {ps[0]['input_len']}/{ps[0]['output_len']}")
            xs += [p["batch"] for p in ps]
            drawn = True
    copy, weight = roofline_inputs(groups)
    if copy and weight and xs:
        bs = sorted(set(xs))
        per = copy * 1e12 / (weight * 1e9)
        ax.plot(bs, [b * per for b in bs], "-", color="black", alpha=0.4, lw=1,
                label=f"roofline B x {copy:.2f} TB/s / {weight:.2f} GB (KV ignored)")
    if not drawn:
        plt.close(fig)
        return None
    _xaxis(ax, xs)
    ax.set_yscale("log")
    ax.set_ylabel("output tokens/s")
    ax.set_title("Output throughput vs concurrency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_latency(groups, out: Path, metric: str, title: str, ylabel: str, floor_ms: float | None = None,
                 floor_label: str = "") -> str | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    xs: list[int] = []
    drawn = False
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    k = 0
    for kind, marker, style in (("loadgen", "o", ""), ("perf_analyzer", "s", "")):
        for (i, o), ms in served_series(groups.get(kind, [])).items():
            col = colors[k % len(colors)]
            k += 1
            c = [m["concurrency"] for m in ms]
            p50 = [m.get(f"{metric}_p50") for m in ms]
            p99 = [m.get(f"{metric}_p99") for m in ms]
            name = "loadgen" if kind == "loadgen" else "PA"
            ax.plot(c, [v if v is not None else float("nan") for v in p50], marker + "-", color=col,
                    label=f"{i}/{o} {name} p50")
            ax.plot(c, [v if v is not None else float("nan") for v in p99], marker + "--", color=col,
                    mfc="none", label=f"{i}/{o} {name} p99")
            xs += c
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    if floor_ms:
        ax.axhline(floor_ms, color="black", alpha=0.4, lw=1, label=floor_label)
    _xaxis(ax, xs)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"{metric.split('_')[0]}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def make_report(results: list[dict], out_dir: str | Path, name: str = "report.md") -> dict[str, str]:
    """Write report.md and the plots into out_dir; returns {"markdown": path, plot name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = classify(results)
    plots: dict[str, str] = {}
    copy, weight = roofline_inputs(groups)
    floor = weight * 1e9 / (copy * 1e12) * 1000 if copy and weight else None
    for key, path in (("throughput", plot_throughput(groups, out)),
                      ("ttft", plot_latency(groups, out, "ttft_ms", "Time to first token vs concurrency", "TTFT (ms)")),
                      ("itl", plot_latency(groups, out, "itl_ms", "Inter-token latency vs concurrency", "ITL (ms)",
                                           floor, "batch-1 floor: weight bytes / BW"))):
        if path:
            plots[key] = path
    md = out / name
    md.write_text(markdown(groups, plots))
    return {"markdown": str(md), **plots}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="result JSON files or directories")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--name", default="report.md")
    args = ap.parse_args(argv)
    results = load_results(args.paths)
    if not results:
        print("no results found", file=sys.stderr)
        return 1
    paths = make_report(results, args.out_dir, args.name)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
