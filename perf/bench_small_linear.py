"""Few-row linear layers: our Triton kernel (kernels/linear.py) against cuBLAS (torch) at the
weight shapes of Llama-3.2-1B and Llama-3-8B, for 1 and 16 rows (batch-1 decode; a 16-token prompt
tail after a cached prefix).

    python perf/bench_small_linear.py --out DIR [--sizes 1b,8b] [--rows 1,16]

Each measurement is a CUDA graph of one layer's op over as many distinct weights as it takes to
pass 256 MB (so the weights come from HBM, not L2, as in the model), replayed and timed with
triton.testing.do_bench (median); the time per op includes the gaps between kernels in a graph,
which at these sizes are a large share. For each shape: cuBLAS, the best kernel config of a sweep,
and the bandwidth both reach (weight bytes / time), against the copy bandwidth measured in the same
run. The gated rows compare the fused SwiGLU form against cuBLAS + our silu_and_mul kernel.
Writes DIR/small_linear.json (device, command, git commit, flat metrics, the best configs).

    python perf/bench_small_linear.py --layer-chain --out DIR [--sizes 1b]

times the projections as the model runs them in a batch-1 decode step instead: one CUDA graph of
every layer's norm, qkv, o, norm, gate_up and down, each layer with its own weights, our kernels
launched with PDL, against the same chain on cuBLAS, and the weight bandwidth each reaches. Then,
one projection at a time, it sweeps that projection's config inside the chain (the others at the
built-in choice), since an op timed in a chain of itself did not predict it between the model's
other kernels. Writes DIR/layer_chain_<size>.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perf.meta import git_commit  # noqa: E402

# (hidden, intermediate, q heads, kv heads, head dim, vocab)
SHAPES = {"1b": (2048, 8192, 32, 8, 64, 128256), "8b": (4096, 14336, 32, 8, 128, 128256)}


def layer_shapes(size: str) -> dict[str, tuple[int, int, bool]]:
    """name -> (N, K, gated) of each linear layer of the model."""
    h, inter, nq, nkv, d, vocab = SHAPES[size]
    return {"qkv": ((nq + 2 * nkv) * d, h, False), "o": (nq * d, h, False),
            "gate_up": (2 * inter, h, True), "down": (h, inter, False), "lm_head": (vocab, h, False)}


def graph_ms(op, weights) -> float:
    """Median ms per op of a CUDA graph that applies `op` once to each weight."""
    import triton.testing
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for w in weights:      # warm-up (compiles, allocator) outside the capture
            op(w)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for w in weights:
            op(w)
    ms = triton.testing.do_bench(graph.replay, warmup=10, rep=60, return_mode="median")
    return ms / len(weights)


def graph_step_us(fn) -> float:
    """Median us of one replay of a CUDA graph of `fn` (run twice first on a side stream, so
    compiles and allocations happen outside the capture)."""
    import triton.testing
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return triton.testing.do_bench(graph.replay, warmup=10, rep=100, return_mode="median") * 1e3


def layer_chain(size: str, out_dir: Path, deadline_s: float) -> None:
    """The batch-1 projections of every layer in one graph (see the module docstring)."""
    from kernels import reference, triton_ops
    from kernels.linear import LinearConfig, choose_linear_config, small_linear
    from perf.bench_engine import copy_bandwidth_tbps

    t_end = time.time() + deadline_s
    h, _, nq, _, d, _ = SHAPES[size]
    num_layers = {"1b": 16, "8b": 32}[size]
    shapes = layer_shapes(size)
    kinds = ("qkv", "o", "gate_up", "down")
    dtype = torch.bfloat16
    layers = [{name: torch.randn(shapes[name][0], shapes[name][1], dtype=dtype, device="cuda") * shapes[name][1] ** -0.5
               for name in kinds} for _ in range(num_layers)]
    norm_w = torch.rand(h, dtype=dtype, device="cuda") + 0.5
    nbytes = sum(w.numel() * 2 for layer in layers for w in layer.values())
    x0 = torch.randn(1, h, dtype=dtype, device="cuda")
    default = {name: choose_linear_config(shapes[name][0] // (2 if shapes[name][2] else 1), shapes[name][1],
                                          shapes[name][2], x0.device) for name in kinds}

    def chain(configs=None):
        """One step's projections: ours with `configs`, or cuBLAS (+ our SiLU-and-mul) if None."""
        def proj(w, a, config, gated=False):
            if config is not None:
                return small_linear(a, w, config, gated=gated)
            y = reference.linear(a, w)
            return triton_ops.silu_and_mul(y) if gated else y

        def step():
            c = configs or dict.fromkeys(kinds)
            x, residual = x0, x0
            for layer in layers:
                hn, residual = triton_ops.fused_add_rms_norm(x, residual, norm_w, 1e-5)
                attn = proj(layer["qkv"], hn, c["qkv"])[:, :nq * d].contiguous()
                x = proj(layer["o"], attn, c["o"])
                hn, residual = triton_ops.fused_add_rms_norm(x, residual, norm_w, 1e-5)
                x = proj(layer["down"], proj(layer["gate_up"], hn, c["gate_up"], gated=True), c["down"])
        return step

    copy = copy_bandwidth_tbps()
    metrics = {"copy_tbps": copy, "weight_mb": nbytes / 1e6, "roofline_us": nbytes / (copy * 1e12) * 1e6}
    metrics["ours_us"] = graph_step_us(chain(default))
    metrics["cublas_us"] = graph_step_us(chain())
    print({k: round(v, 2) for k, v in metrics.items()}, flush=True)
    best = dict(default)
    best_us = metrics["ours_us"]
    candidates = [LinearConfig(bn, bk, sp, nw, ns) for bn in (16, 32, 64) for bk in (128, 256)
                  for sp in (1, 2, 4) for nw, ns in ((2, 3), (4, 5))]
    for name in ("gate_up", "down", "qkv", "o"):   # the most bytes first, in case the deadline hits
        for cfg in candidates:
            if time.time() > t_end:
                print("deadline: sweep stopped", flush=True)
                break
            trial = dict(best, **{name: cfg})
            try:
                us = graph_step_us(chain(trial))
            except Exception as e:  # noqa: BLE001  (registers / shared memory exceeded)
                print(f"  {name} {cfg}: {type(e).__name__}", flush=True)
                continue
            if us < best_us:
                best_us, best = us, trial
                print(f"  {name} {cfg}: {us:.1f} us (best so far)", flush=True)
        metrics[f"after_{name}_us"] = best_us
    metrics["tuned_us"] = best_us
    for key in ("ours_us", "cublas_us", "tuned_us"):
        metrics[key.replace("_us", "_tbps")] = nbytes / (metrics[key] * 1e-6) / 1e12
    print({k: round(v, 2) for k, v in metrics.items()}, flush=True)
    report = {"device": torch.cuda.get_device_name(), "command": " ".join(["python"] + sys.argv),
              "git_commit": git_commit(), "date": time.strftime("%Y-%m-%d"), "metrics": metrics,
              "default_configs": {k: v.__dict__ for k, v in default.items()},
              "best_configs": {k: v.__dict__ for k, v in best.items()}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"layer_chain_{size}.json").write_text(json.dumps(report, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="perf/results/latest")
    ap.add_argument("--sizes", default="1b,8b")
    ap.add_argument("--rows", default="1,16")
    ap.add_argument("--quick", action="store_true", help="a smaller config sweep")
    ap.add_argument("--layer-chain", action="store_true", help="the batch-1 layer chain (module docstring)")
    ap.add_argument("--deadline", type=float, default=240, help="seconds for the layer-chain sweep")
    args = ap.parse_args()
    if args.layer_chain:
        for size in args.sizes.split(","):
            layer_chain(size, Path(args.out), args.deadline)
        return
    import torch.nn.functional as F

    from kernels.activation import silu_and_mul
    from kernels.linear import LinearConfig, small_linear
    from perf.bench_engine import copy_bandwidth_tbps

    copy = copy_bandwidth_tbps()
    metrics: dict[str, float] = {"copy_tbps": copy}
    best_configs: dict[str, dict] = {}
    dtype = torch.bfloat16
    block_ns = (16, 32, 64)
    block_ks = (128, 256) if args.quick else (128, 256, 512)
    splits = (1, 2, 4) if args.quick else (1, 2, 4, 8)
    for size in args.sizes.split(","):
        for name, (n, k, gated) in layer_shapes(size).items():
            nbytes = n * k * 2
            copies = max(2, -(-(256 << 20) // nbytes))
            weights = [torch.randn(n, k, dtype=dtype, device="cuda") * k ** -0.5 for _ in range(copies)]
            for m in [int(r) for r in args.rows.split(",")]:
                key = f"{size}_{name}_m{m}"
                x = torch.randn(m, k, dtype=dtype, device="cuda")
                ref = F.linear(x, weights[0])
                if gated:
                    ref = silu_and_mul(ref)
                    cublas = graph_ms(lambda w: silu_and_mul(F.linear(x, w)), weights)
                else:
                    cublas = graph_ms(lambda w: F.linear(x, w), weights)
                results = []
                for bn, bk, split in itertools.product(block_ns, block_ks, splits):
                    if name == "lm_head" and split > 1:
                        continue     # 128k rows fill the GPU without splitting
                    cfg = LinearConfig(block_n=bn, block_k=bk, split_k=split)
                    try:
                        out = small_linear(x, weights[0], cfg, gated=gated)
                    except Exception as e:  # noqa: BLE001  (registers / shared memory exceeded)
                        print(f"  {key} {cfg}: {type(e).__name__}", flush=True)
                        continue
                    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                    assert err < 2e-2, (key, cfg, err)
                    results.append((graph_ms(lambda w: small_linear(x, w, cfg, gated=gated), weights), cfg))
                ms, cfg = min(results, key=lambda r: r[0])
                # Second pass: warps and pipeline depth around the best tile.
                for warps, stages in itertools.product((2, 4, 8), (3, 4, 5, 6)):
                    c2 = LinearConfig(block_n=cfg.block_n, block_k=cfg.block_k, split_k=cfg.split_k,
                                      num_warps=warps, num_stages=stages)
                    try:
                        t = graph_ms(lambda w: small_linear(x, w, c2, gated=gated), weights)
                    except Exception as e:  # noqa: BLE001  (a config can exceed shared memory)
                        print(f"  {key} {c2}: {type(e).__name__}", flush=True)
                        continue
                    if t < ms:
                        ms, cfg = t, c2
                metrics[f"{key}_cublas_us"] = cublas * 1e3
                metrics[f"{key}_triton_us"] = ms * 1e3
                metrics[f"{key}_cublas_tbps"] = nbytes / (cublas * 1e-3) / 1e12
                metrics[f"{key}_triton_tbps"] = nbytes / (ms * 1e-3) / 1e12
                metrics[f"{key}_speedup"] = cublas / ms
                best_configs[key] = cfg.__dict__
                print(f"{key:18s} N={n:6d} K={k:5d}  cublas {cublas * 1e3:7.2f} us "
                      f"({metrics[f'{key}_cublas_tbps']:.2f} TB/s)  triton {ms * 1e3:7.2f} us "
                      f"({metrics[f'{key}_triton_tbps']:.2f} TB/s)  x{cublas / ms:.2f}  {cfg}", flush=True)
            del weights
            torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(), "command": " ".join(["python"] + sys.argv),
              "git_commit": git_commit(), "date": time.strftime("%Y-%m-%d"), "metrics": metrics,
              "best_configs": best_configs}
    (out / "small_linear.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
