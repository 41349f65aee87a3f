"""Linear layers for a few rows (decode at small batch, a short prompt tail) in Triton.

y = x @ w.T for x [M, K] with M <= 16 and w [N, K] (the Hugging Face layout). With so few rows the
layer is a read of the weight and nothing else, so the kernel is built around that read: every
program owns BLOCK_N weight rows and walks (its share of) K in BLOCK_K steps, the loads pipelined;
the few activation rows ride along in a 16-row tile so the product runs on the tensor cores.

When N / BLOCK_N programs are too few to keep every SM's loads in flight, K is split SPLIT_K ways:
each program writes an fp32 partial and a second kernel sums them (in a fixed order, so results do
not depend on timing). The gated form reads the gate and up rows of a stacked [2I, K] weight in the
same program and writes silu(gate) * up, so the SwiGLU activation costs no kernel of its own.

cuBLAS picks tiles for large M; at M <= 16 on the small matrices of a 1B model it reads the weights
at 1.5-2.8 TB/s (perf/bench_small_linear.py measures both side by side).

One row over a weight small enough to be held whole by one wave of programs (a 1B model's qkv and o
projections: 12.6 and 8.4 MB) takes a third kernel: each program loads its entire [BLOCK_N, K] slice
into registers before the PDL wait, so the whole read is in flight while the kernels ahead of it
(the norm, the attention's merge) still run, instead of one tile of it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import reference
from ._alloc import new_output
from .activation import silu_and_mul
from .heuristics import device_num_sms
from .norm import residual_rms_norm
from .pdl import let_next_launch, pdl_mode, signal_next_launch, wait_for_previous

__all__ = ["LinearConfig", "choose_linear_config", "linear", "small_linear", "MAX_SMALL_M",
           "one_row_linear", "one_row_tile", "ONE_ROW_SLICE_BYTES", "rms_norm_linear", "SplitSum"]

MAX_SMALL_M = 16
# Weight bytes each program of one_row_linear holds in registers: 64 KB is 64 registers a thread at
# 8 warps. one_row_tile takes weights of at most two such programs an SM; for sm_90 ptxas gives the
# kernel 156 registers a thread, so one program fits an SM and the 1B qkv's 192 programs run in two
# waves: that measured faster than one wave (below, _one_row_signal_at_wait).
ONE_ROW_SLICE_BYTES = 64 * 1024
ONE_ROW_WARPS = 8
ONE_ROW_PROGRAMS_PER_SM = 2


@dataclass(frozen=True)
class OneRowConfig:
    slice_bytes: int = ONE_ROW_SLICE_BYTES
    num_warps: int = ONE_ROW_WARPS
    programs_per_sm: int = ONE_ROW_PROGRAMS_PER_SM
    maxnreg: int | None = None   # a register cap for ptxas (so programs_per_sm can be resident)


@functools.lru_cache(maxsize=None)
def one_row_config() -> OneRowConfig:
    """The one-row kernel's launch shape; LLM_ONE_ROW_CONFIG="warps,slice_kb,programs_per_sm[,maxnreg]"
    overrides it (read once), to measure other shapes side by side."""
    spec = os.environ.get("LLM_ONE_ROW_CONFIG", "").strip()
    if not spec:
        return OneRowConfig()
    parts = [int(p) for p in spec.split(",")]
    if len(parts) not in (3, 4):
        raise ValueError(f"LLM_ONE_ROW_CONFIG must be warps,slice_kb,programs_per_sm[,maxnreg], got {spec!r}")
    return OneRowConfig(slice_bytes=parts[1] * 1024, num_warps=parts[0], programs_per_sm=parts[2],
                        maxnreg=parts[3] if len(parts) == 4 else None)


def _one_row_launch_opts() -> dict:
    cfg = one_row_config()
    return dict(num_warps=cfg.num_warps, SIGNAL_AT_WAIT=_one_row_signal_at_wait(),
                **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}))


@functools.lru_cache(maxsize=None)
def _one_row_signal_at_wait() -> bool:
    """Whether one_row_linear lets the next kernel launch at its wait (the default) or after its
    product (LLM_ONE_ROW_SIGNAL=product: 80 registers a thread instead of 156, so the 1B qkv's
    programs all fit at once). Batch-1 1B on an H100, same call: at the wait 909.5 / 911.4 /
    910.4 / 911.3 tok/s, after the product 891.1 / 893.2 / 890.7 / 894.0 (graph 1.068 vs 1.082 ms;
    perf/results/2026-12-07-h100/batch1_fusions/): the next kernel's later launch costs more than
    the second wave."""
    return os.environ.get("LLM_ONE_ROW_SIGNAL", "").strip() != "product"


@dataclass(frozen=True)
class SplitSum:
    """One row's product left as its split-K partials (fp32 [split, 1, N]) for the next kernel to
    sum, in split order and then rounded to `dtype` as _reduce_splits_kernel does (the same bits):
    `linear(..., keep_split=True)` returns it where the row's next op, rms_norm_linear, can take
    it (LLM_NORM_LINEAR=1), so no reduce kernel runs between the two."""
    parts: torch.Tensor
    dtype: torch.dtype

    @property
    def shape(self) -> tuple[int, int]:
        return (self.parts.shape[1], self.parts.shape[2])

    def reduce(self) -> torch.Tensor:
        """The summed row [1, N] in `dtype`, by the reduce kernel (where a consumer cannot fold)."""
        split, m, n = self.parts.shape
        out = new_output((m, n), self.dtype, self.parts.device)
        block = min(1024, triton.next_power_of_2(n))
        pdl = pdl_mode(self.parts.device)
        _reduce_splits_kernel[(m, triton.cdiv(n, block))](self.parts, out, m, n, out.stride(0), SPLIT_K=split,
                                                           BLOCK=block, GATED=False, PDL=pdl,
                                                           launch_pdl=pdl > 0, num_warps=4)
        return out


@dataclass(frozen=True)
class LinearConfig:
    block_n: int = 32
    block_k: int = 256
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 4


@triton.jit
def _x_tile(x_rows, res_rows, norm_w_ptr, offs_k, mask, K, rstd, NORM: tl.constexpr,
            HAS_RESIDUAL: tl.constexpr):
    """The activation tile [BLOCK_M, BLOCK_K] at offs_k: x itself, or (NORM) RMSNorm(x + residual)
    * norm_w with the row's rstd, in kernels/norm.py's formula and roundings (its fp32 sum of
    squares may add in another order: rstd can differ in the last bit)."""
    x = tl.load(x_rows + offs_k[None, :], mask=mask, other=0.0)
    if NORM:
        if HAS_RESIDUAL:
            x = x + tl.load(res_rows + offs_k[None, :], mask=mask, other=0.0)
        nw = tl.load(norm_w_ptr + offs_k, mask=offs_k < K, other=0.0)
        x = (x.to(tl.float32) * rstd).to(x.dtype) * nw[None, :].to(x.dtype)
    return x


@triton.jit
def _small_linear_kernel(x_ptr, w_ptr, out_ptr, part_ptr, res_ptr, norm_w_ptr, res_out_ptr,
                         M, N, K, stride_xm, stride_wn, stride_om, k_per_split, gate_offset, eps,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         SPLIT: tl.constexpr, GATED: tl.constexpr, DOT_PRECISION: tl.constexpr,
                         NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr, K_POW2: tl.constexpr,
                         PDL: tl.constexpr):
    let_next_launch(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m[:, None] < M
    n_mask = offs_n[:, None] < N
    k_start = pid_k * k_per_split
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    res_rows = res_ptr + offs_m[:, None] * stride_xm
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn
    u_rows = w_rows + gate_offset * stride_wn
    # The first weight tile is read before waiting for the previous kernel: nothing in a step
    # writes weights, so this read overlaps the kernels still running (PDL, see pdl.py).
    offs_k = k_start + tl.arange(0, BLOCK_K)
    w = tl.load(w_rows + offs_k[None, :], mask=n_mask & (offs_k[None, :] < K), other=0.0)
    if GATED:
        u = tl.load(u_rows + offs_k[None, :], mask=n_mask & (offs_k[None, :] < K), other=0.0)
    wait_for_previous(PDL)
    rstd = 1.0
    if NORM:
        # One row (M = 1, the host's rule): (residual add +) its RMSNorm statistic, by every
        # program from the whole row (a few KB in L2); the first program writes the new residual.
        kk = tl.arange(0, K_POW2)
        row = tl.load(x_ptr + kk, mask=kk < K, other=0.0)
        if HAS_RESIDUAL:
            row = row + tl.load(res_ptr + kk, mask=kk < K, other=0.0)
            if (pid_n == 0) & (pid_k == 0):
                tl.store(res_out_ptr + kk, row, mask=kk < K)
        rf = row.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(rf * rf, axis=0) / K + eps)
    x = _x_tile(x_rows, res_rows, norm_w_ptr, offs_k, m_mask & (offs_k[None, :] < K), K, rstd,
                NORM, HAS_RESIDUAL)
    acc = tl.dot(x, tl.trans(w), input_precision=DOT_PRECISION, out_dtype=tl.float32)
    if GATED:
        acc_up = tl.dot(x, tl.trans(u), input_precision=DOT_PRECISION, out_dtype=tl.float32)
    for k0 in range(k_start + BLOCK_K, k_start + k_per_split, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k[None, :] < K
        x = _x_tile(x_rows, res_rows, norm_w_ptr, offs_k, m_mask & k_mask, K, rstd, NORM, HAS_RESIDUAL)
        w = tl.load(w_rows + offs_k[None, :], mask=n_mask & k_mask, other=0.0)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
        if GATED:
            u = tl.load(u_rows + offs_k[None, :], mask=n_mask & k_mask, other=0.0)
            acc_up = tl.dot(x, tl.trans(u), acc_up, input_precision=DOT_PRECISION)
    out_mask = m_mask & (offs_n[None, :] < N)
    if SPLIT:
        # Partials [split, M, (2 if GATED) * N] in fp32; the reduce kernel applies the gate.
        width = 2 * N if GATED else N
        base = part_ptr + pid_k * M * width + offs_m[:, None] * width + offs_n[None, :]
        tl.store(base, acc, mask=out_mask)
        if GATED:
            tl.store(base + N, acc_up, mask=out_mask)
    else:
        if GATED:
            acc = acc / (1.0 + tl.exp(-acc)) * acc_up
        tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _reduce_splits_kernel(part_ptr, out_ptr, M, N, stride_om,
                          SPLIT_K: tl.constexpr, BLOCK: tl.constexpr, GATED: tl.constexpr,
                          PDL: tl.constexpr):
    let_next_launch(PDL)
    wait_for_previous(PDL)
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    width = 2 * N if GATED else N
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    up = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):   # fixed order: the same sum on every run
        base = part_ptr + s * M * width + row * width + offs
        acc += tl.load(base, mask=mask, other=0.0)
        if GATED:
            up += tl.load(base + N, mask=mask, other=0.0)
    if GATED:
        acc = acc / (1.0 + tl.exp(-acc)) * up
    tl.store(out_ptr + row * stride_om + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _one_row_linear_kernel(x_ptr, w_ptr, out_ptr, res_ptr, norm_w_ptr, res_out_ptr, N, K, stride_wn,
                           eps, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NORM: tl.constexpr,
                           HAS_RESIDUAL: tl.constexpr, X_SPLITS: tl.constexpr, SIGNAL_AT_WAIT: tl.constexpr,
                           PDL: tl.constexpr):
    let_next_launch(PDL)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)   # the whole of K: BLOCK_K = next_power_of_2(K)
    k_ok = offs_k < K
    w = tl.load(w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :],
                mask=(offs_n[:, None] < N) & k_ok[None, :], other=0.0)
    if NORM:
        norm_w = tl.load(norm_w_ptr + offs_k, mask=k_ok, other=0.0)
    # Everything this program reads of the weights is requested above, before the wait: the
    # bytes stream while the previous kernels finish (PDL, see pdl.py).
    # The next kernel may launch at the wait (SIGNAL_AT_WAIT) or once the product is done. At the
    # wait, ptxas gives the kernel 156 registers a thread for sm_90 (one 64 KB-slice program an
    # SM); after the product, 80 (three fit), yet that was slower (see _one_row_signal_at_wait).
    wait_for_previous(PDL, SIGNAL_AT_WAIT)
    if X_SPLITS > 0:
        # x arrives as the previous projection's split-K partials (SplitSum): summed in split
        # order and rounded to the row's dtype, as its reduce kernel would have.
        xs = tl.zeros([BLOCK_K], dtype=tl.float32)
        for s in tl.static_range(X_SPLITS):
            xs += tl.load(x_ptr + s * K + offs_k, mask=k_ok, other=0.0)
        x = xs.to(w_ptr.dtype.element_ty)
    else:
        x = tl.load(x_ptr + offs_k, mask=k_ok, other=0.0)
    if NORM:
        # (Residual add +) RMSNorm of the row, by every program (the row is a few KB in L2),
        # in kernels/norm.py's formula and roundings (the fp32 sum of squares may add in another
        # order, so rstd can differ in the last bit); the first program writes the new residual.
        if HAS_RESIDUAL:
            x = x + tl.load(res_ptr + offs_k, mask=k_ok, other=0.0)
            if tl.program_id(0) == 0:
                tl.store(res_out_ptr + offs_k, x, mask=k_ok)
        xf = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / K + eps)
        x = (xf * rstd).to(x.dtype) * norm_w.to(x.dtype)
    acc = tl.sum(w.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)
    if not SIGNAL_AT_WAIT:
        signal_next_launch(PDL)
    tl.store(out_ptr + offs_n, acc.to(out_ptr.dtype.element_ty), mask=offs_n < N)


@functools.lru_cache(maxsize=None)   # asked at every one-row call of an eager step
def one_row_tile(n: int, k: int, itemsize: int, device: torch.device | None = None) -> int | None:
    """BLOCK_N of one_row_linear for an [n, k] weight, or None where the weight is too large for
    every program's slice to be resident at once (then the loads could not all be issued early)."""
    cfg = one_row_config()
    block_k = triton.next_power_of_2(k)
    rows = cfg.slice_bytes // (block_k * itemsize)
    if rows < 1:
        return None
    block_n = 1 << (rows.bit_length() - 1)   # a power of two, <= rows
    sms = device_num_sms(device)
    return block_n if triton.cdiv(n, block_n) <= cfg.programs_per_sm * sms else None


def one_row_linear(x: torch.Tensor, w: torch.Tensor, block_n: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [1, K] @ w[N, K].T -> [1, N] in x's dtype (fp32 products and sum), each program holding
    block_n whole weight rows (`one_row_tile`)."""
    assert x.dim() == 2 and x.shape[0] == 1 and w.dim() == 2 and x.shape[1] == w.shape[1], (x.shape, w.shape)
    assert w.stride(1) == 1 and x.dtype == w.dtype
    x = x.contiguous()
    N, K = w.shape
    if out is None:
        out = new_output((1, N), x.dtype, x.device)
    assert out.shape == (1, N) and out.dtype == x.dtype and out.stride(1) == 1
    if N == 0:
        return out
    _one_row_linear_kernel[(triton.cdiv(N, block_n),)](
        x, w, out, x, x, x, N, K, w.stride(0), 0.0, BLOCK_N=block_n, BLOCK_K=triton.next_power_of_2(K),
        NORM=False, HAS_RESIDUAL=False, X_SPLITS=0, PDL=(pdl := pdl_mode(x.device)), launch_pdl=pdl > 0,
        **_one_row_launch_opts())
    return out


def rms_norm_linear(x: torch.Tensor | SplitSum, residual: torch.Tensor | None, norm_w: torch.Tensor,
                    eps: float, w: torch.Tensor, gated: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of reference.rms_norm_linear: (linear(RMSNorm(x [+ residual]) * norm_w, w,
    gated), the new residual). One row takes one kernel, one_row_linear's or small_linear's, each
    program normalising the row itself (it is a few KB), so no norm kernel stands between the
    kernel before and the weight reads; more rows take the norm kernel and linear. x may be a
    SplitSum (the previous projection's partials): one_row_linear's programs sum it themselves,
    anywhere else the reduce kernel runs first."""
    fused = _norm_linear_on() and _small_linear_on() and w.dtype == norm_w.dtype
    # The tile is looked up only where the fusion is on (off by default: every eager step's norms
    # come here and take the norm kernel).
    one_row_n = None if not fused or gated or not _one_row_on() else one_row_tile(
        w.shape[0], w.shape[1], w.element_size(), w.device)
    if isinstance(x, SplitSum):
        if fused and one_row_n is not None and residual is not None and x.dtype == w.dtype:
            return _one_row_norm_linear(x.parts, x.parts.shape[0], residual, norm_w, eps, w, one_row_n)
        x = x.reduce()
    if not (fused and x.dim() == 2 and x.shape[0] == 1 and x.dtype == w.dtype):
        h, residual = residual_rms_norm(x, residual, norm_w, eps)
        return linear(h, w, gated=gated), residual
    if one_row_n is not None:
        return _one_row_norm_linear(x.contiguous(), 0, residual, norm_w, eps, w, one_row_n)
    x = x.contiguous()
    K = w.shape[1]
    res_out = x if residual is None else new_output(x.shape, x.dtype, x.device)
    if residual is not None:
        assert residual.shape == x.shape and residual.dtype == x.dtype
        residual = residual.contiguous()
    n = w.shape[0] // 2 if gated else w.shape[0]
    out = small_linear(x, w, choose_linear_config(n, K, gated, x.device), gated=gated,
                       norm=(residual, norm_w, eps, res_out))
    return out, res_out


def _one_row_norm_linear(x: torch.Tensor, x_splits: int, residual: torch.Tensor | None, norm_w: torch.Tensor,
                         eps: float, w: torch.Tensor, block_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rms_norm_linear's one-row kernel: x is the row [1, K] (x_splits 0) or fp32 partials
    [x_splits, 1, K] to sum first. Returns (product [1, N], new residual [1, K])."""
    N, K = w.shape
    assert norm_w.shape == (K,) and norm_w.stride(0) == 1 and w.stride(1) == 1
    assert x.is_contiguous() and x.shape[-1] == K and (x_splits > 0 or x.dtype == w.dtype)
    assert x_splits == 0 or (x.dtype == torch.float32 and x.shape[:2] == (x_splits, 1))
    if residual is not None:
        assert residual.shape == (1, K) and residual.dtype == w.dtype
        residual = residual.contiguous()
        res_out = new_output((1, K), w.dtype, w.device)
    else:
        assert x_splits == 0, "partials need a residual to add to"
        res_out = x   # the new residual is x itself; nothing is written
    out = new_output((1, N), w.dtype, w.device)
    _one_row_linear_kernel[(triton.cdiv(N, block_n),)](
        x, w, out, residual if residual is not None else x, norm_w, res_out, N, K, w.stride(0),
        float(eps), BLOCK_N=block_n, BLOCK_K=triton.next_power_of_2(K), NORM=True,
        HAS_RESIDUAL=residual is not None, X_SPLITS=x_splits, PDL=(pdl := pdl_mode(w.device)),
        launch_pdl=pdl > 0, **_one_row_launch_opts())
    return out, res_out


def small_linear(x: torch.Tensor, w: torch.Tensor, config: LinearConfig | None = None,
                 gated: bool = False, out: torch.Tensor | None = None,
                 norm: tuple | None = None, keep_split: bool = False) -> torch.Tensor | SplitSum:
    """x [M, K] (M <= 16) @ w[N, K].T -> [M, N] in x's dtype; fp32 accumulation.

    gated: w stacks gate [I, K] over up [I, K]; returns silu(x @ gate.T) * (x @ up.T), [M, I].
    out: where to write the result (contiguous rows), else a new tensor.
    norm: (residual or None, norm_w, eps, residual_out) for one row: the product is of
    RMSNorm(x + residual) * norm_w, and x + residual is written to residual_out (rms_norm_linear).
    keep_split: a split-K product of one plain row is returned as its partials (SplitSum), not
    reduced.
    """
    config = config or LinearConfig()
    assert x.dim() == 2 and w.dim() == 2 and x.shape[1] == w.shape[1], (x.shape, w.shape)
    assert x.shape[0] <= MAX_SMALL_M, f"small_linear takes at most {MAX_SMALL_M} rows, got {x.shape[0]}"
    assert w.stride(1) == 1 and x.dtype == w.dtype
    if x.stride(1) != 1:
        x = x.contiguous()
    M, K = x.shape
    N = w.shape[0] // 2 if gated else w.shape[0]
    if out is None:
        out = new_output((M, N), x.dtype, x.device)
    assert out.shape == (M, N) and out.dtype == x.dtype and out.stride(1) == 1
    if M == 0 or N == 0:
        return out
    split = max(1, config.split_k)
    # Each split covers whole BLOCK_K steps so only the last one masks.
    k_per_split = triton.cdiv(triton.cdiv(K, split), config.block_k) * config.block_k
    split = triton.cdiv(K, k_per_split)
    part = out
    if split > 1:
        part = torch.empty((split, M, 2 * N if gated else N), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(N, config.block_n), split)
    residual, norm_w, eps, res_out = norm if norm is not None else (None, x, 0.0, x)
    if norm is not None:
        assert M == 1 and x.is_contiguous() and norm_w.shape == (K,) and norm_w.stride(0) == 1
        assert residual is None or (residual.shape == x.shape and residual.is_contiguous())
    _small_linear_kernel[grid](x, w, out, part, residual if residual is not None else x, norm_w, res_out,
                               M, N, K, x.stride(0), w.stride(0), out.stride(0), k_per_split, N, float(eps),
                               BLOCK_M=MAX_SMALL_M, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                               SPLIT=split > 1, GATED=gated,
                               DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
                               NORM=norm is not None, HAS_RESIDUAL=residual is not None,
                               K_POW2=triton.next_power_of_2(K) if norm is not None else 16,
                               PDL=(pdl := pdl_mode(x.device)), launch_pdl=pdl > 0,
                               num_warps=config.num_warps, num_stages=config.num_stages)
    if split > 1 and keep_split and M == 1 and not gated:
        return SplitSum(part, x.dtype)
    if split > 1:
        block = min(1024, triton.next_power_of_2(N))
        _reduce_splits_kernel[(M, triton.cdiv(N, block))](part, out, M, N, out.stride(0),
                                                           SPLIT_K=split, BLOCK=block, GATED=gated,
                                                           PDL=pdl, launch_pdl=pdl > 0, num_warps=4)
    return out


@functools.lru_cache(maxsize=None)   # asked at every call of an eager step
def choose_linear_config(n: int, k: int, gated: bool, device: torch.device | None = None) -> LinearConfig:
    """Tiles for an [n, k] weight (n = output features, per half when gated), from the sweep of
    perf/bench_small_linear.py on an H100 (1B and 8B shapes, 1 and 16 rows)."""
    if gated:
        return LinearConfig(block_n=32, block_k=128, num_warps=2, num_stages=3)
    if n >= 65536:     # vocabulary projection: plenty of programs, wide tiles
        return LinearConfig(block_n=64, block_k=256, num_warps=4, num_stages=4)
    sms = device_num_sms(device)
    if k >= 8192 and triton.cdiv(n, 32) <= sms // 2:
        # Few output rows over a long K (a 1B model's down projection): split K so every SM reads.
        return LinearConfig(block_n=64, block_k=128, split_k=4, num_warps=4, num_stages=5)
    return LinearConfig(block_n=32, block_k=256, num_warps=4, num_stages=5)


def linear(x: torch.Tensor, w: torch.Tensor, gated: bool = False, out: torch.Tensor | None = None,
           keep_split: bool = False):
    """Triton-side version of reference.linear: our kernels for <= 16 rows (one_row_linear for a
    single row over a weight one wave of programs can hold, else small_linear), cuBLAS above that
    (LLM_SMALL_LINEAR=0: cuBLAS for every row count, to measure the two side by side).
    keep_split: the caller passes the result on to rms_norm_linear only, so a one-row split-K
    product may stay a SplitSum for it to sum (with LLM_NORM_LINEAR=1; else a tensor as always)."""
    if x.dim() == 2 and x.shape[0] <= MAX_SMALL_M and _small_linear_on():
        if x.shape[0] == 1 and not gated and _one_row_on():
            block_n = one_row_tile(w.shape[0], w.shape[1], w.element_size(), x.device)
            if block_n is not None:
                return one_row_linear(x, w, block_n, out=out)
        n = w.shape[0] // 2 if gated else w.shape[0]
        return small_linear(x, w, choose_linear_config(n, w.shape[1], gated, x.device), gated=gated, out=out,
                            keep_split=keep_split and out is None and _norm_linear_on())
    if gated:   # cuBLAS, then our SiLU-and-mul kernel
        assert out is None, "the gated form returns a new tensor"
        return silu_and_mul(torch.nn.functional.linear(x, w))
    return reference.linear(x, w, out=out)


@functools.lru_cache(maxsize=None)
def _small_linear_on() -> bool:
    return os.environ.get("LLM_SMALL_LINEAR", "1") != "0"


@functools.lru_cache(maxsize=None)
def _one_row_on() -> bool:
    """LLM_ONE_ROW_LINEAR=0: one row takes small_linear too (for side-by-side runs)."""
    return os.environ.get("LLM_ONE_ROW_LINEAR", "1") != "0"


@functools.lru_cache(maxsize=None)
def _norm_linear_on() -> bool:
    """LLM_NORM_LINEAR=1: one row's norm inside the projection's kernel (and the down
    projection's split-K sum inside the next qkv kernel); unset or 0, the norm kernel before the
    linear. Off by default: batch-1 1B decode on an H100 was 4.2% slower with it beside the
    default one-row signal (873 vs 911 tok/s), 2.6% faster beside the signal after the product
    (915 vs 892), which is 0.5% above the default (perf/results/2026-12-07-h100/batch1_fusions/)."""
    return os.environ.get("LLM_NORM_LINEAR", "0") == "1"
