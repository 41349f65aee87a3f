"""The batch-1 MLP as one weight-streaming kernel (kernels/mlp.py) against the two projections
the engine runs by default (kernels/linear.py: gate/up with SwiGLU, then down with its split-K sum).

    python perf/bench_fused_mlp.py --out DIR [--size 1b] [--rows 1] [--deadline 240]

Each measurement is one CUDA graph of every layer's MLP half as a decode step runs it (the
residual add + RMSNorm kernel, then the MLP), each layer with its own weights so they come from
HBM, our kernels launched with PDL; then the same with each layer's attention-half projections
(norm, qkv, o) in between, as the model has them. Reports us per step and the weight bandwidth
against the copy bandwidth measured in the same run; sweeps the fused kernel's tiles and the
down projection's storage (Hugging Face's [H, I], or transposed [I, H]) until the deadline, and
checks every fused result against the two-kernel one. Writes DIR/fused_mlp_<size>.json with the
best config (also printed as `best_config=` for scripts).
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

from perf.bench_small_linear import SHAPES, graph_step_us as step_us  # noqa: E402
from perf.meta import git_commit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="perf/results/latest")
    ap.add_argument("--size", default="1b")
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=240, help="seconds for the config sweep")
    args = ap.parse_args()

    from kernels import triton_ops
    from kernels.linear import linear
    from kernels.mlp import MlpConfig, gated_mlp
    from perf.bench_engine import copy_bandwidth_tbps

    t_end = time.time() + args.deadline
    hidden, inter, nq, nkv, d, _ = SHAPES[args.size]
    num_layers = {"1b": 16, "8b": 32}[args.size]
    dtype = torch.bfloat16

    def weight(n, k):
        return torch.randn(n, k, dtype=dtype, device="cuda") * k ** -0.5

    layers = [{"qkv": weight((nq + 2 * nkv) * d, hidden), "o": weight(nq * d, hidden),
               "gate_up": weight(2 * inter, hidden), "down": weight(hidden, inter)} for _ in range(num_layers)]
    down_t = [layer["down"].t().contiguous().t() for layer in layers]   # [I, H] storage, [H, I] view
    norm_w = torch.rand(hidden, dtype=dtype, device="cuda") + 0.5
    x0 = torch.randn(args.rows, hidden, dtype=dtype, device="cuda")
    mlp_bytes = sum((layer["gate_up"].numel() + layer["down"].numel()) * 2 for layer in layers)
    all_bytes = sum(w.numel() * 2 for layer in layers for w in layer.values())

    def step(mlp, with_attention: bool):
        def run():
            x, residual = x0, x0
            for i, layer in enumerate(layers):
                if with_attention:
                    hn, residual = triton_ops.fused_add_rms_norm(x, residual, norm_w, 1e-5)
                    attn = linear(hn, layer["qkv"])[:, :nq * d].contiguous()
                    x = linear(attn, layer["o"])
                hn, residual = triton_ops.fused_add_rms_norm(x, residual, norm_w, 1e-5)
                x = mlp(i, hn)
            return x
        return run

    def two_kernels(i, hn):
        return linear(linear(hn, layers[i]["gate_up"], gated=True), layers[i]["down"])

    def fused(config, transposed):
        downs = down_t if transposed else [layer["down"] for layer in layers]
        return lambda i, hn: gated_mlp(hn, layers[i]["gate_up"], downs[i], config)

    copy = copy_bandwidth_tbps()
    metrics = {"copy_tbps": copy, "mlp_weight_mb": mlp_bytes / 1e6, "all_weight_mb": all_bytes / 1e6,
               "mlp_roofline_us": mlp_bytes / (copy * 1e12) * 1e6}
    reference_out = step(two_kernels, False)()
    metrics["two_kernels_mlp_us"] = step_us(step(two_kernels, False))
    print({k: round(v, 2) for k, v in metrics.items()}, flush=True)

    def check(mlp):
        out = step(mlp, False)()
        err = ((out.float() - reference_out.float()).norm() / reference_out.float().norm()).item()
        assert err < 2e-2, err
        return err

    trials = []
    # The fused kernel's tiles and down's storage, the default first (so it always runs).
    grid = [(MlpConfig(), False), (MlpConfig(), True)]
    grid += [(MlpConfig(bi, bk, bn, nw, ns), tr) for tr in (False, True) for bi in (32, 64)
             for bk, bn in ((128, 128), (128, 256), (256, 128)) for nw, ns in ((4, 3), (4, 4), (8, 3))]
    grid += [(MlpConfig(64, 128, 128, 4, 4, reduce_block_n=rb), False) for rb in (32, 64)]
    for config, transposed in dict.fromkeys(grid):   # in order, each once
        if trials and time.time() > t_end:
            print("deadline: sweep stopped", flush=True)
            break
        try:
            err = check(fused(config, transposed))
            us = step_us(step(fused(config, transposed), False))
        except Exception as e:  # noqa: BLE001  (shared memory / registers exceeded)
            print(f"  {config} transposed={transposed}: {type(e).__name__}: {str(e)[:120]}", flush=True)
            continue
        trials.append((us, config, transposed, err))
        print(f"  {us:8.1f} us ({mlp_bytes / us / 1e6:.2f} TB/s)  transposed={transposed}  {config}  "
              f"rel.err {err:.1e}", flush=True)
    best_us, best, best_t, _ = min(trials, key=lambda t: t[0])
    metrics["fused_mlp_best_us"] = best_us
    for key in ("two_kernels_mlp_us", "fused_mlp_best_us"):
        metrics[key.replace("_us", "_tbps")] = mlp_bytes / (metrics[key] * 1e-6) / 1e12
    # Same again with the attention half's projections between the MLPs, best fused against two.
    for rep in ("", "_repeat"):
        metrics[f"two_kernels_layers{rep}_us"] = step_us(step(two_kernels, True))
        metrics[f"fused_layers{rep}_us"] = step_us(step(fused(best, best_t), True))
    metrics["fused_layers_speedup"] = metrics["two_kernels_layers_us"] / metrics["fused_layers_us"]
    print({k: round(v, 3) for k, v in metrics.items()}, flush=True)
    for transposed in (False, True):
        layout = [t for t in trials if t[2] == transposed]
        if layout:
            us, c, _, _ = min(layout, key=lambda t: t[0])
            metrics[f"fused_mlp_best_{'transposed' if transposed else 'hf'}_us"] = us
            # One line a script can read (LLM_MLP_CONFIG's format).
            print(f"best_{'transposed' if transposed else 'hf'}_config="
                  f"{c.block_i},{c.block_k},{c.block_n},{c.num_warps},{c.num_stages},{c.reduce_block_n}"
                  f" {us:.1f} us", flush=True)
    report = {"device": torch.cuda.get_device_name(), "command": " ".join(["python"] + sys.argv),
              "git_commit": git_commit(), "date": time.strftime("%Y-%m-%d"), "metrics": metrics,
              "best_config": {**best.__dict__, "down_transposed": best_t},
              "trials": [{"us": us, **c.__dict__, "down_transposed": t, "rel_err": e} for us, c, t, e in trials]}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"fused_mlp_{args.size}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
