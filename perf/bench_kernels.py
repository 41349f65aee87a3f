#!/usr/bin/env python
"""Benchmark the Triton serving kernels on a CUDA GPU.

    python perf/bench_kernels.py --out DIR [--sweep] [--only copy,prefill,...]

Every kernel is first checked against kernels/reference.py at the benchmarked
shape (the script aborts on a mismatch), then timed with
triton.testing.do_bench (median of many runs, L2 flushed between runs).
Writes DIR/kernels.json ({"device", "command", "git_commit", "date",
"metrics": {name: number}}) and a bar plot DIR/kernels.png.

Bandwidth metrics are bytes that must cross DRAM / time (TB/s = 1e12 B/s);
copy_tbps counts bytes read + written.  Prefill TFLOP/s counts causal work as
half of 4 * L^2 * H * D.  Decode is timed as a CUDA-graph replay (how an
engine runs decode; at batch 1 eager timing measures Python launch cost);
*_nograph_tbps is the same call launched eagerly.  *_torch_tbps are the
plain-PyTorch references (torch eager) at the same shape.  To add metrics,
append a function returning a dict to METRIC_GROUPS (see collect_metrics).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from typing import Callable, Dict

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from perf.meta import git_commit  # noqa: E402

from kernels import reference as ref_ops  # noqa: E402

DTYPE = torch.bfloat16
PAGE = 16
# Relative L2 error allowed vs the fp32 reference before the run is aborted.
ATTN_TOL = 2e-2
ELEM_TOL = 1e-2


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

class MismatchError(RuntimeError):
    pass


def time_ms(fn: Callable[[], object], rounds: int = 3) -> float:
    """Median (ms) of `rounds` do_bench medians: one slow round (a clock or
    power transient, seen once on an H100 here) cannot set the number."""
    import statistics
    import triton.testing
    return statistics.median(
        triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        for _ in range(rounds))


def poisoned(fn: Callable[[], object]):
    """Run fn once with NaN-initialised kernel outputs (unwritten -> NaN)."""
    from kernels._alloc import set_poison
    previous = set_poison(True)
    try:
        return fn()
    finally:
        set_poison(previous)


def graphed(fn: Callable[[], object]) -> Callable[[], None]:
    """Capture fn in a CUDA graph; return its replay.

    Decode steps run under CUDA graphs in a serving engine, and at batch 1 a
    step is shorter than the Python launch overhead, so eager timing would
    measure the host.  do_bench still flushes L2 before every replay.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # compile + allocator warm-up outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def check(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float) -> float:
    """Abort the benchmark if out is not finite or too far from ref."""
    if not torch.isfinite(out).all():
        raise MismatchError(f"{name}: output has non-finite / unwritten elements")
    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    print(f"  check {name}: rel_err={err:.2e}")
    if not err <= tol:
        raise MismatchError(f"{name}: relative error {err:.3e} > {tol}")
    return err


def tbps(nbytes: float, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e12


def paged_kv(batch: int, ctx: int, hkv: int, d: int, dtype=DTYPE):
    """Random paged cache holding `batch` sequences of `ctx` tokens, pages shuffled."""
    pages = -(-ctx // PAGE)
    num_blocks = batch * pages + 8
    k_cache = torch.randn(num_blocks, PAGE, hkv, d, dtype=dtype, device="cuda")
    v_cache = torch.randn_like(k_cache)
    perm = torch.randperm(num_blocks, device="cuda")[:batch * pages]
    block_tables = perm.view(batch, pages).to(torch.int32).contiguous()
    return k_cache, v_cache, block_tables


# --------------------------------------------------------------------------
# Metric groups: each returns {metric_name: value}
# --------------------------------------------------------------------------

def bench_copy(args) -> Dict[str, float]:
    n = 1 << 30
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src))
    assert torch.equal(dst[:4096], src[:4096])
    return {"copy_tbps": tbps(2 * n, ms)}


def _sdpa_backend_ms(q, k, v, backend, **kw):
    from torch.nn.attention import sdpa_kernel
    import torch.nn.functional as F

    def run():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, **kw)

    try:
        out = run()
    except RuntimeError as exc:  # backend not available for this shape/build
        print(f"  sdpa {backend}: unavailable ({str(exc).splitlines()[0][:100]})")
        return float("nan"), None
    return time_ms(run), out


def bench_prefill(args) -> Dict[str, float]:
    from torch.nn.attention import SDPBackend
    from kernels import triton_ops

    heads, d = 32, 128
    metrics = {}
    for L in (2048, 8192):
        flops = 4.0 * L * L * heads * d / 2
        k_cache, v_cache, block_tables = paged_kv(1, L, heads, d)
        q = torch.randn(L, heads, d, dtype=DTYPE, device="cuda")
        meta = dict(block_tables=block_tables,
                    context_lens=torch.tensor([L], dtype=torch.int32, device="cuda"),
                    cu_seqlens_q=torch.tensor([0, L], dtype=torch.int32, device="cuda"),
                    max_seqlen_q=L, softmax_scale=1.0 / math.sqrt(d))
        ours = lambda: triton_ops.paged_attention(q, k_cache, v_cache, **meta)  # noqa: E731
        expected = ref_ops.paged_attention(q, k_cache, v_cache, **meta)
        check(f"prefill L={L}", poisoned(ours), expected, ATTN_TOL)
        metrics[f"prefill_L{L}_tflops"] = flops / (time_ms(ours) * 1e-3) / 1e12

        # SDPA on the same K/V laid out contiguously [1, H, L, D]
        k, v = ref_ops.gather_kv(k_cache, v_cache, block_tables[0], L)
        qs, ks, vs = (t.transpose(0, 1).unsqueeze(0).contiguous() for t in (q, k, v))
        for name, backend in (("flash", SDPBackend.FLASH_ATTENTION),
                              ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            ms, out = _sdpa_backend_ms(qs, ks, vs, backend, is_causal=True)
            if out is not None:
                check(f"sdpa {name} L={L}", out[0].transpose(0, 1), expected, ATTN_TOL)
            metrics[f"prefill_L{L}_sdpa_{name}_tflops"] = flops / (ms * 1e-3) / 1e12
        del k_cache, v_cache, expected
    return metrics


def _decode_inputs(batch, ctx, hq=32, hkv=8, d=128):
    k_cache, v_cache, block_tables = paged_kv(batch, ctx, hkv, d)
    q = torch.randn(batch, hq, d, dtype=DTYPE, device="cuda")
    meta = dict(block_tables=block_tables,
                context_lens=torch.full((batch,), ctx, dtype=torch.int32, device="cuda"),
                cu_seqlens_q=torch.arange(batch + 1, dtype=torch.int32, device="cuda"),
                max_seqlen_q=1, softmax_scale=1.0 / math.sqrt(d))
    kv_bytes = 2 * batch * ctx * hkv * d * k_cache.element_size()
    return q, k_cache, v_cache, meta, kv_bytes


def bench_decode(args) -> Dict[str, float]:
    import torch.nn.functional as F
    from kernels import triton_ops

    metrics = {}
    for batch, ctx in ((64, 4096), (1, 4096)):
        q, k_cache, v_cache, meta, kv_bytes = _decode_inputs(batch, ctx)
        ours = lambda: triton_ops.paged_attention(q, k_cache, v_cache, **meta)  # noqa: E731
        expected = ref_ops.paged_attention(q, k_cache, v_cache, **meta)
        check(f"decode B={batch} C={ctx}", poisoned(ours), expected, ATTN_TOL)
        splits = triton_ops.choose_num_splits(batch, 8, ctx, 1, device="cuda")
        print(f"  decode B={batch} C={ctx}: num_splits={splits}")
        metrics[f"decode_B{batch}_C{ctx}_tbps"] = tbps(kv_bytes, time_ms(graphed(ours)))
        metrics[f"decode_B{batch}_C{ctx}_nograph_tbps"] = tbps(kv_bytes, time_ms(ours))

        # SDPA on a contiguous GQA cache [B, Hkv, C, D], query [B, Hq, 1, D]
        ks = torch.stack([ref_ops.gather_kv(k_cache, v_cache, block_tables_row, ctx)[0]
                          for block_tables_row in meta["block_tables"]]).transpose(1, 2).contiguous()
        vs = torch.stack([ref_ops.gather_kv(k_cache, v_cache, block_tables_row, ctx)[1]
                          for block_tables_row in meta["block_tables"]]).transpose(1, 2).contiguous()
        qs = q.unsqueeze(2)
        scale = meta["softmax_scale"]
        sdpa = lambda: F.scaled_dot_product_attention(qs, ks, vs, scale=scale, enable_gqa=True)  # noqa: E731
        check(f"sdpa decode B={batch}", sdpa()[:, :, 0], expected, ATTN_TOL)
        metrics[f"sdpa_decode_B{batch}_C{ctx}_tbps"] = tbps(kv_bytes, time_ms(graphed(sdpa)))
        metrics[f"sdpa_decode_B{batch}_C{ctx}_nograph_tbps"] = tbps(kv_bytes, time_ms(sdpa))
        del k_cache, v_cache, ks, vs
        if batch == 1:
            metrics.update(_decode_in_graph(batch, ctx))
        metrics.update(_decode_rope_fused_vs_kernels(batch, ctx))
    # What a graph replay of one tiny kernel costs when timed alone: the floor under every
    # single-call figure above (do_bench's events, the graph's launch on the GPU).
    one = torch.zeros(1, device="cuda")
    metrics["graph_replay_floor_us"] = time_ms(graphed(lambda: one.add_(1))) * 1e3
    return metrics


def _decode_rope_fused_vs_kernels(batch: int, ctx: int) -> Dict[str, float]:
    """A decode layer's RoPE + K/V write + attention through rope_and_paged_attention (with
    LLM_FUSED_DECODE_ATTENTION=1 one launch, the last split merging; off by default, when both
    sides run the same kernels) against the kernels it replaces (the RoPE kernel, the attention,
    the merge kernel), each timed as a graph replay, GQA 32/8, D=128."""
    from kernels import triton_ops
    from kernels.heuristics import choose_num_splits

    hq, hkv, d = 32, 8, 128
    k_cache, v_cache, tables = paged_kv(batch, ctx, hkv, d)
    qkv = torch.randn(batch, (hq + 2 * hkv) * d, dtype=DTYPE, device="cuda")
    q, k, v = (t.view(batch, -1, d) for t in qkv.split([hq * d, hkv * d, hkv * d], dim=-1))
    pos = torch.full((batch,), ctx - 1, dtype=torch.long, device="cuda")
    slots = (tables[:, (ctx - 1) // PAGE].long() * PAGE + (ctx - 1) % PAGE).contiguous()
    inv = 1.0 / 500000.0 ** (torch.arange(0, d, 2, device="cuda", dtype=torch.float64) / d)
    ang = torch.arange(ctx, device="cuda", dtype=torch.float64)[:, None] * inv[None, :]
    cos_sin = torch.cat([ang.cos(), ang.sin()], dim=-1).float()
    meta = dict(block_tables=tables, context_lens=torch.full((batch,), ctx, dtype=torch.int32, device="cuda"),
                cu_seqlens_q=torch.arange(batch + 1, dtype=torch.int32, device="cuda"), max_seqlen_q=1,
                softmax_scale=1.0 / math.sqrt(d))
    counters = torch.zeros(batch * hkv, dtype=torch.int32, device="cuda")

    def fused():
        return triton_ops.rope_and_paged_attention(q, k, v, pos, cos_sin, k_cache, v_cache, slots, **meta,
                                                   merge_counters=counters)

    def kernels():
        q_rot, _ = triton_ops.rope_and_write_kv(q, k, v, pos, cos_sin, k_cache, v_cache, slots)
        return triton_ops.paged_attention(q_rot, k_cache, v_cache, **meta)

    check(f"rope + decode B={batch} C={ctx}: one launch vs kernels", poisoned(fused), kernels(), ATTN_TOL)
    print(f"  rope + decode B={batch} C={ctx}: num_splits={choose_num_splits(batch, hkv, ctx, 1, device='cuda')}")
    out = {f"decode_rope_fused_B{batch}_C{ctx}_us": time_ms(graphed(fused)) * 1e3,
           f"decode_rope_kernels_B{batch}_C{ctx}_us": time_ms(graphed(kernels)) * 1e3}
    for key, val in out.items():
        print(f"  {key}: {val:.2f}")
    return out


def _decode_in_graph(batch: int, ctx: int, total_bytes: int = 256 << 20) -> Dict[str, float]:
    """Decode attention as the engine runs it: one call per layer inside a step's CUDA graph,
    back to back. A graph of n calls, each over its own cache (n x the KV bytes pass 256 MB, so
    the reads come from HBM, not L2), timed as a whole and divided by n; ours and SDPA alike."""
    import torch.nn.functional as F
    from kernels import triton_ops

    q, _, _, meta, kv_bytes = _decode_inputs(batch, ctx)
    n = max(2, -(-total_bytes // kv_bytes))
    caches = [paged_kv(batch, ctx, 8, 128)[:2] for _ in range(n)]
    tables = meta["block_tables"]
    ours = [lambda k=k, v=v: triton_ops.paged_attention(q, k, v, **meta) for k, v in caches]
    contiguous = []
    for k, v in caches:   # SDPA reads a contiguous [B, Hkv, C, D] copy of each cache
        kv = [ref_ops.gather_kv(k, v, row, ctx) for row in tables]
        contiguous.append((torch.stack([a for a, _ in kv]).transpose(1, 2).contiguous(),
                           torch.stack([b for _, b in kv]).transpose(1, 2).contiguous()))
    del caches
    qs = q.unsqueeze(2)
    scale = meta["softmax_scale"]
    sdpa = [lambda k=k, v=v: F.scaled_dot_product_attention(qs, k, v, scale=scale, enable_gqa=True)
            for k, v in contiguous]
    out = {}
    for name, fns in ((f"decode_B{batch}_C{ctx}_in_graph_tbps", ours),
                      (f"sdpa_decode_B{batch}_C{ctx}_in_graph_tbps", sdpa)):
        ms = time_ms(graphed(lambda fns=fns: [f() for f in fns])) / n
        out[name] = tbps(kv_bytes, ms)
        print(f"  {name}: {out[name]:.2f} ({ms * 1e3:.2f} us per call, {n} calls per graph)")
    return out


def bench_elementwise(args) -> Dict[str, float]:
    from kernels import triton_ops

    tokens, hidden, inter = 8192, 4096, 4096
    hq, hkv, d = 32, 8, 128
    es = torch.tensor([], dtype=DTYPE).element_size()
    metrics = {}

    x = torch.randn(tokens, hidden, dtype=DTYPE, device="cuda")
    res = torch.randn_like(x)
    w = torch.randn(hidden, dtype=DTYPE, device="cuda")
    check("rms_norm", poisoned(lambda: triton_ops.rms_norm(x, w, 1e-6)), ref_ops.rms_norm(x, w, 1e-6), ELEM_TOL)
    nbytes = 2 * tokens * hidden * es
    metrics["rmsnorm_tbps"] = tbps(nbytes, time_ms(lambda: triton_ops.rms_norm(x, w, 1e-6)))
    metrics["rmsnorm_torch_tbps"] = tbps(nbytes, time_ms(lambda: ref_ops.rms_norm(x, w, 1e-6)))

    got = poisoned(lambda: triton_ops.fused_add_rms_norm(x, res, w, 1e-6))
    want = ref_ops.fused_add_rms_norm(x, res, w, 1e-6)
    check("fused_add_rms_norm", got[0], want[0], ELEM_TOL)
    check("fused_add_rms_norm residual", got[1], want[1], ELEM_TOL)
    nbytes = 4 * tokens * hidden * es
    metrics["fused_add_rmsnorm_tbps"] = tbps(
        nbytes, time_ms(lambda: triton_ops.fused_add_rms_norm(x, res, w, 1e-6)))
    metrics["fused_add_rmsnorm_torch_tbps"] = tbps(
        nbytes, time_ms(lambda: ref_ops.fused_add_rms_norm(x, res, w, 1e-6)))
    del x, res

    g = torch.randn(tokens, 2 * inter, dtype=DTYPE, device="cuda")
    check("silu_and_mul", poisoned(lambda: triton_ops.silu_and_mul(g)), ref_ops.silu_and_mul(g), ELEM_TOL)
    nbytes = 3 * tokens * inter * es
    metrics["silu_mul_tbps"] = tbps(nbytes, time_ms(lambda: triton_ops.silu_and_mul(g)))
    metrics["silu_mul_torch_tbps"] = tbps(nbytes, time_ms(lambda: ref_ops.silu_and_mul(g)))
    del g

    qkv = torch.randn(tokens, hq + 2 * hkv, d, dtype=DTYPE, device="cuda")
    q, k, v = qkv[:, :hq], qkv[:, hq:hq + hkv], qkv[:, hq + hkv:]
    max_pos = 8192
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, d, 2, device="cuda").float() / d)
    ang = torch.arange(max_pos, device="cuda").float()[:, None] * inv_freq[None, :]
    cos_sin = torch.cat([ang.cos(), ang.sin()], dim=-1)
    positions = torch.randint(0, max_pos, (tokens,), device="cuda")
    k_cache, v_cache, _ = paged_kv(1, tokens, hkv, d)
    slots = torch.randperm(k_cache.shape[0] * PAGE, device="cuda")[:tokens]
    kc_ref, vc_ref = k_cache.clone(), v_cache.clone()
    got = poisoned(lambda: triton_ops.rope_and_write_kv(q, k, v, positions, cos_sin, k_cache, v_cache, slots))
    want = ref_ops.rope_and_write_kv(q, k, v, positions, cos_sin, kc_ref, vc_ref, slots)
    for name, a, b in (("q", got[0], want[0]), ("k", got[1], want[1]),
                       ("k_cache", k_cache, kc_ref), ("v_cache", v_cache, vc_ref)):
        check(f"rope_and_write_kv {name}", a, b, ELEM_TOL)
    # read q, k, v, positions, slots, cos/sin rows; write q_rot, k_rot, cache k, v
    nbytes = (tokens * (hq + 2 * hkv) * d * es + tokens * 16 + tokens * d * 4
              + tokens * (hq + hkv) * d * es + 2 * tokens * hkv * d * es)
    metrics["rope_write_tbps"] = tbps(nbytes, time_ms(
        lambda: triton_ops.rope_and_write_kv(q, k, v, positions, cos_sin, k_cache, v_cache, slots)))
    metrics["rope_write_torch_tbps"] = tbps(nbytes, time_ms(
        lambda: ref_ops.rope_and_write_kv(q, k, v, positions, cos_sin, kc_ref, vc_ref, slots)))
    return metrics


# Ordered groups; --only selects by key.  Engine-level groups can be added here.
METRIC_GROUPS: Dict[str, Callable[[argparse.Namespace], Dict[str, float]]] = {
    "copy": bench_copy,
    "prefill": bench_prefill,
    "decode": bench_decode,
    "elementwise": bench_elementwise,
}


def collect_metrics(args, groups=None) -> Dict[str, float]:
    metrics: Dict[str, float] = {}
    for name, fn in METRIC_GROUPS.items():
        if groups and name not in groups:
            continue
        print(f"[{name}]", flush=True)
        metrics.update(fn(args))
        torch.cuda.empty_cache()
    if "copy_tbps" in metrics:  # fractions of copy bandwidth for the memory-bound kernels
        for key in list(metrics):
            if key.endswith("_tbps") and key != "copy_tbps" and "_torch" not in key \
                    and not key.startswith("sdpa"):
                metrics[key.replace("_tbps", "_frac_of_copy")] = metrics[key] / metrics["copy_tbps"]
    return metrics


# --------------------------------------------------------------------------
# Optional tuning sweep (not part of kernels.json)
# --------------------------------------------------------------------------

def sweep(args) -> dict:
    """Time attention tile configs and split counts; prints and returns a table."""
    from kernels import triton_ops
    from kernels.attention import AttnConfig

    results = {}
    for L in ((2048, 8192) if "prefill" in args.sweep else ()):
        k_cache, v_cache, block_tables = paged_kv(1, L, 32, 128)
        q = torch.randn(L, 32, 128, dtype=DTYPE, device="cuda")
        meta = dict(block_tables=block_tables,
                    context_lens=torch.tensor([L], dtype=torch.int32, device="cuda"),
                    cu_seqlens_q=torch.tensor([0, L], dtype=torch.int32, device="cuda"),
                    max_seqlen_q=L, softmax_scale=1 / math.sqrt(128))
        flops = 4.0 * L * L * 32 * 128 / 2
        for bm, bn, nw, ns in [(128, 128, 8, 3), (128, 128, 8, 4), (128, 64, 8, 3), (128, 128, 4, 3),
                               (64, 128, 4, 3), (128, 128, 8, 2), (256, 128, 8, 2), (64, 64, 4, 4)]:
            cfg = AttnConfig(bm, bn, nw, ns)
            key = f"prefill_L{L}_{bm}x{bn}_w{nw}_s{ns}_tflops"
            try:
                ms = time_ms(lambda: triton_ops.paged_attention(q, k_cache, v_cache, **meta, config=cfg))
                results[key] = flops / (ms * 1e-3) / 1e12
            except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory
                print(f"  config {cfg}: {type(exc).__name__}: {str(exc)[:80]}")
            print(f"  L={L} {cfg}: {results.get(key, float('nan')):.1f} TFLOP/s", flush=True)
        del k_cache, v_cache

    # (batch, [(block_n, warps, stages)], split counts)
    decode_sweeps = (
        (1, [(bn, nw, ns) for bn in (64, 128) for nw in (4, 8) for ns in (1, 2)] + [(32, 4, 2)], (16, 32, 64)),
        (4, [(128, 4, 3), (64, 4, 3), (64, 4, 2)], (4, 8, 16, 32)),
        (16, [(128, 4, 3), (64, 4, 3)], (1, 2, 3, 4)),
        (64, [(128, 4, 3), (64, 2, 4), (128, 4, 4), (128, 8, 3)], (1,)))
    for batch, cfgs, split_list in (decode_sweeps if "decode" in args.sweep else ()):
        q, k_cache, v_cache, meta, kv_bytes = _decode_inputs(batch, 4096)
        expected = ref_ops.paged_attention(q, k_cache, v_cache, **meta)
        for bn, nw, ns in cfgs:
            cfg = AttnConfig(16, bn, nw, ns)
            for splits in split_list:
                fn = lambda: triton_ops.paged_attention(  # noqa: E731
                    q, k_cache, v_cache, **meta, num_splits=splits, config=cfg)
                key = f"decode_B{batch}_n{bn}_w{nw}_s{ns}_split{splits}_tbps"
                try:
                    check(key, poisoned(fn), expected, ATTN_TOL)
                    results[key] = tbps(kv_bytes, time_ms(graphed(fn)))
                except Exception as exc:  # noqa: BLE001 - e.g. out of registers / shared memory
                    print(f"  {key}: {type(exc).__name__}: {str(exc)[:80]}")
                    continue
                print(f"  {key}: {results[key]:.2f}", flush=True)
        if batch == 1:
            _profile_decode(q, k_cache, v_cache, meta, args)
        del k_cache, v_cache
    return results


def _profile_decode(q, k_cache, v_cache, meta, args):
    """Kernel durations and host overhead of the default decode call."""
    import time
    from kernels import triton_ops
    fn = lambda: triton_ops.paged_attention(q, k_cache, v_cache, **meta)  # noqa: E731
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    print(f"  host time per decode call: {(t1 - t0) / 200 * 1e6:.1f} us", flush=True)
    replay = graphed(fn)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            replay()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=6)
    print(table)
    with open(os.path.join(args.out, "profile_decode_B1.txt"), "w") as f:
        f.write(table)


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------

def print_table(metrics: Dict[str, float]) -> None:
    width = max(len(k) for k in metrics) if metrics else 10
    print("\n" + "metric".ljust(width) + "  value")
    for key, val in metrics.items():
        print(key.ljust(width) + f"  {val:10.3f}")


def plot(metrics: Dict[str, float], path: str, device: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flops = {k: v for k, v in metrics.items() if k.endswith("_tflops")}
    bw = {k: v for k, v in metrics.items() if k.endswith("_tbps")}
    fig, axes = plt.subplots(1, 2, figsize=(16, 6), gridspec_kw={"width_ratios": [1, 2]})
    for ax, data, unit in ((axes[0], flops, "TFLOP/s"), (axes[1], bw, "TB/s")):
        names = list(data)
        vals = [0.0 if math.isnan(v) else v for v in data.values()]
        colors = ["tab:gray" if ("sdpa" in n or "_torch" in n) else
                  ("tab:green" if n == "copy_tbps" else "tab:blue") for n in names]
        ax.bar(range(len(names)), vals, color=colors)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.rsplit("_", 1)[0] for n in names],
                           rotation=60, ha="right", fontsize=8)
        ax.set_ylabel(unit)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.2f}" if v < 10 else f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    axes[0].set_title("prefill attention (blue: ours, gray: torch)")
    axes[1].set_title("memory-bound kernels (blue: ours, gray: torch, green: device copy)")
    fig.suptitle(f"kernels on {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--only", default="", help=f"comma list of {','.join(METRIC_GROUPS)}")
    parser.add_argument("--sweep", nargs="?", const="prefill,decode", default="",
                        help="also sweep attention configs (DIR/sweep.json): prefill, decode or both")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels.py needs a CUDA GPU", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    groups = [g for g in args.only.split(",") if g]
    device = torch.cuda.get_device_name()
    try:
        metrics = collect_metrics(args, groups)
        sweep_results = sweep(args) if args.sweep else None
    except MismatchError as exc:
        print(f"ABORT: kernel mismatch: {exc}", file=sys.stderr)
        return 1

    report = {
        "device": device,
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "metrics": metrics,
    }
    with open(os.path.join(args.out, "kernels.json"), "w") as f:
        json.dump(report, f, indent=2)
    if sweep_results is not None:
        with open(os.path.join(args.out, "sweep.json"), "w") as f:
            json.dump(sweep_results, f, indent=2)
    print_table(metrics)
    try:
        plot(metrics, os.path.join(args.out, "kernels.png"), device)
    except ImportError as exc:
        print(f"no plot: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
