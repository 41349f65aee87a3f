"""Offline engine throughput (no server, no client): the ceiling the served numbers are compared with.

    python perf/bench_offline.py --model-dir DIR --shapes 128x512,1024x128 --concurrency 1,8,32,128,256 \
        --out perf/results/offline.json [--budget 120]

For each (input, output) shape and concurrency C it adds C requests at once to an in-process
LLMEngine (same options as the served one: max_num_seqs 256, max_model_len 2048, 8192-token
steps, greedy, ignore_eos with min_tokens = max_tokens) and steps it until all are done:
output_tokps = C * output / wall time (prefill included), as a served run at concurrency C with
requests that all start together would see at best. It also reports the decode-only rate (after
every prefill finished) and the offline TTFT (p50 of add -> first token; the prefill queue).
Prompts are random token ids, BOS first, exactly `input` tokens.

On CUDA it also measures device-to-device copy bandwidth (perf/bench_engine.py's method) and the
weight bytes, which give the batch-1 decode roofline: copy_bw / weight_bytes tokens/s.
With --arrival-spread-ms the requests of a point arrive evenly over that time (how a burst of
clients reaches the served engine, one Triton execute() after another), TTFT from each arrival.
Points are skipped (and listed) once --budget seconds have passed. Writes one JSON:
{"kind": "offline", "device", "command", "git_commit", "date", "points": [...], "metrics": {flat}}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from perf.loadgen import git_commit, percentile  # noqa: E402
from perf.meta import add_threads_arg, apply_threads  # noqa: E402


def parse_shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        i, o = item.lower().split("x")
        out.append((int(i), int(o)))
    return out


def copy_bandwidth_tbps(device: str) -> float | None:
    """Read+write bytes per second of a large copy (CUDA: perf/bench_engine.py's measurement)."""
    if device.startswith("cuda"):
        from perf.bench_engine import copy_bandwidth_tbps as cuda_copy
        return cuda_copy()
    n = 64 << 20  # CPU: 256 MiB fp32, median of a few copies
    src = torch.randn(n)
    dst = torch.empty_like(src)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * n * 4 / sorted(times)[len(times) // 2] / 1e12


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_point(engine, tag: str, concurrency: int, input_len: int, output_len: int, seed: int = 0,
              arrival_spread_s: float = 0.0) -> dict:
    """arrival_spread_s > 0: the requests arrive evenly spaced over that time instead of at once
    (as a burst of clients reaches a served engine one execute() at a time); TTFT counts from
    each request's own arrival."""
    from engine import SamplingParams
    device = engine.config.device
    params = SamplingParams(max_tokens=output_len, min_tokens=output_len, temperature=0.0, ignore_eos=True)
    vocab = min(engine.tokenizer.get_vocab_size(), engine.model_config.vocab_size)
    bos = engine.model_config.bos_token_id
    g = torch.Generator().manual_seed(seed)
    prompts = []
    for _ in range(concurrency):
        ids = torch.randint(10, vocab, (input_len,), generator=g).tolist()
        if bos is not None:
            ids[0] = bos
        prompts.append(ids)
    arrivals = [i * arrival_spread_s / max(1, concurrency - 1) for i in range(concurrency)]
    _sync(device)
    t0 = time.perf_counter()
    added = 0
    first: dict[str, float] = {}
    produced = 0
    t_all_prefilled = None
    tokens_at_prefilled = 0
    steps = 0
    while added < concurrency or engine.has_unfinished():
        now = time.perf_counter() - t0
        while added < concurrency and arrivals[added] <= now:
            engine.add_request(f"{tag}-{added}", prompts[added], params)
            added += 1
        if not engine.has_unfinished():
            time.sleep(max(0.0, arrivals[added] - (time.perf_counter() - t0)))
            continue
        outs = engine.step()
        steps += 1
        now = time.perf_counter()
        for o in outs:
            n = len(o.token_ids)
            produced += n
            if n and o.request_id not in first:
                first[o.request_id] = now - t0 - arrivals[int(o.request_id.rsplit("-", 1)[1])]
        if t_all_prefilled is None and len(first) == concurrency:
            t_all_prefilled, tokens_at_prefilled = now, produced
    _sync(device)
    t1 = time.perf_counter()
    expected = concurrency * output_len
    decode_time = (t1 - t_all_prefilled) if t_all_prefilled else 0.0
    return {
        "concurrency": concurrency, "input_len": input_len, "output_len": output_len,
        "output_tokens": produced, "expected_output_tokens": expected, "duration_s": t1 - t0,
        "steps": steps,
        "output_tokps": produced / (t1 - t0),
        "decode_tokps": (produced - tokens_at_prefilled) / decode_time if decode_time > 0 else None,
        "ttft_ms_p50": (percentile(list(first.values()), 50) or 0.0) * 1000,
        "ttft_ms_max": max(first.values()) * 1000 if first else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--shapes", default="128x512,1024x128", help="INxOUT,...")
    ap.add_argument("--concurrency", default="1,8,32,128,256")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--kv-cache-memory-fraction", type=float, default=0.90)
    ap.add_argument("--budget", type=float, default=150.0, help="seconds for all points; later ones are skipped")
    ap.add_argument("--no-copy-bandwidth", action="store_true")
    ap.add_argument("--arrival-spread-ms", type=float, default=0.0,
                    help="requests arrive evenly over this time instead of at once (diagnostic)")
    ap.add_argument("--out", required=True)
    add_threads_arg(ap)
    args = ap.parse_args(argv)
    apply_threads(args)
    from engine import EngineConfig, LLMEngine

    t_begin = time.perf_counter()
    shapes = parse_shapes(args.shapes)
    concs = [int(c) for c in args.concurrency.split(",")]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    metrics: dict = {}
    if not args.no_copy_bandwidth:
        metrics["copy_tbps"] = copy_bandwidth_tbps(args.device)
    engine = LLMEngine(EngineConfig(model_dir=args.model_dir, device=args.device, max_model_len=args.max_model_len,
                                    max_num_seqs=args.max_num_seqs,
                                    kv_cache_memory_fraction=args.kv_cache_memory_fraction))
    metrics["engine_init_s"] = time.perf_counter() - t_begin
    w = engine.runner.model.w
    tied = engine.model_config.tie_word_embeddings
    weight_bytes = sum(t.numel() * t.element_size() for k, t in w.items() if not (k == "lm_head" and tied))
    metrics["weight_gb"] = weight_bytes / 1e9
    metrics["kv_bytes_per_token"] = engine.runner.bytes_per_block / engine.config.block_size
    metrics["kv_capacity_tokens"] = engine.kv_capacity_tokens
    if metrics.get("copy_tbps"):
        metrics["roofline_bs1_tokps"] = metrics["copy_tbps"] * 1e12 / weight_bytes
    points, skipped = [], []
    for (i, o) in shapes:
        # Warm up this shape: compiles/tunes the prefill kernels at its lengths and an 8k-token step.
        run_point(engine, f"warm{i}", min(max(concs), max(1, 8192 // i + 1)), i, 4)
        for c in concs:
            if time.perf_counter() - t_begin > args.budget:
                skipped.append(f"{i}x{o}@c{c}")
                continue
            if c * (i + o) > engine.kv_capacity_tokens:
                print(f"note: {i}x{o} at c{c} needs {c * (i + o)} KV tokens > {engine.kv_capacity_tokens}: "
                      "requests will queue/preempt", flush=True)
            p = run_point(engine, f"in{i}-out{o}-c{c}", c, i, o, arrival_spread_s=args.arrival_spread_ms / 1000)
            points.append(p)
            print(f"offline in{i:5d} out{o:4d} c{c:4d}: {p['output_tokps']:10.1f} tok/s "
                  f"(decode {p['decode_tokps'] or 0:10.1f}) ttft p50 {p['ttft_ms_p50']:8.1f} ms "
                  f"in {p['duration_s']:.2f}s", flush=True)
            key = f"offline_in{i}_out{o}_c{c}"
            metrics[f"{key}_output_tokps"] = p["output_tokps"]
            metrics[f"{key}_decode_tokps"] = p["decode_tokps"]
            metrics[f"{key}_ttft_ms_p50"] = p["ttft_ms_p50"]
            if (i, o) == shapes[0]:  # the primary shape also without the shape in the key
                metrics[f"offline_c{c}_output_tokps"] = p["output_tokps"]
    report = {"kind": "offline", "device": device_name, "command": " ".join(["python"] + sys.argv),
              "git_commit": git_commit(), "date": time.strftime("%Y-%m-%d"),
              "primary_shape": f"{shapes[0][0]}x{shapes[0][1]}", "points": points, "skipped": skipped,
              "metrics": metrics}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} ({time.perf_counter() - t_begin:.1f}s; skipped: {skipped or 'none'})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
