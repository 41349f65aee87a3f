"""The SwiGLU MLP of a few rows as one weight-streaming kernel: down(silu(x @ gate.T) * (x @ up.T)).

At batch 1 the MLP is a read of its weights (100 MB a layer for a 1B model) and nothing else. Run
as two projections, the down projection cannot start reading until the gate/up projection has
finished, so each layer pays two kernel ramps and tails, and the wait between them, in which HBM
is idle. Here each program owns BLOCK_I rows of the intermediate layer instead: it reads those
rows of gate and up (the whole hidden dimension), forms its BLOCK_I activations, then reads the
matching BLOCK_I columns of down and writes its partial product of the output [M, H] in fp32.
No program depends on another, so the read of down follows the read of gate/up in each program
without a grid-wide wait. A second, small kernel sums the partials in a fixed order (the same sum
on every run, so greedy outputs do not depend on timing) and rounds to the model's dtype.

The activations are rounded to the model's dtype before the down product, as they are when the
two projections run apart (kernels/linear.py), so the two paths differ only in the order of the
fp32 sums. down may be stored either way: [H, I] as Hugging Face does (each program reads a
BLOCK_I-wide column band, 2 * BLOCK_I bytes a row) or transposed, [I, H] viewed as [H, I] (each
program's band is contiguous); the kernel takes strides.

Off by default (LLM_FUSED_MLP=1 turns it on): at batch 1 on an H100 (1B shape) it streams the MLP at
the same rate as the two kernels (engine -0.3%, perf/results/2026-12-07-h100/fused_mlp/), so the
grid-wide wait between them is not where that time goes.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._alloc import new_output
from .linear import linear, rms_norm_linear
from .norm import residual_rms_norm
from .pdl import let_next_launch, pdl_mode, wait_for_previous

__all__ = ["MlpConfig", "gated_mlp", "rms_norm_mlp", "mlp_config", "MAX_MLP_ROWS"]

MAX_MLP_ROWS = 16


@dataclass(frozen=True)
class MlpConfig:
    """The best of perf/bench_fused_mlp.py's sweep on an H100 at the 1B shape, one row (fewer,
    longer programs: 128 of them for I = 8192, so fewer partials to sum)."""
    block_i: int = 64     # intermediate rows per program
    block_k: int = 128    # hidden columns per step of the gate/up read
    block_n: int = 128    # output columns per step of the down read
    num_warps: int = 4
    num_stages: int = 4
    reduce_block_n: int = 16


@triton.jit
def _gated_mlp_kernel(x_ptr, gu_ptr, d_ptr, part_ptr, M, H, I, stride_xm, stride_gu, stride_dn, stride_di,
                      BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr,
                      BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, PDL: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m[:, None] < M
    offs_i = pid * BLOCK_I + tl.arange(0, BLOCK_I)
    i_mask = offs_i[:, None] < I
    g_rows = gu_ptr + offs_i[:, None].to(tl.int64) * stride_gu
    u_rows = g_rows + I.to(tl.int64) * stride_gu
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    # The first gate/up tiles are read before waiting for the kernel that writes x (PDL, pdl.py):
    # nothing in a step writes weights.
    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k[None, :] < H
    g = tl.load(g_rows + offs_k[None, :], mask=i_mask & k_mask, other=0.0)
    u = tl.load(u_rows + offs_k[None, :], mask=i_mask & k_mask, other=0.0)
    wait_for_previous(PDL)
    x = tl.load(x_rows + offs_k[None, :], mask=m_mask & k_mask, other=0.0)
    acc_g = tl.dot(x, tl.trans(g), input_precision=DOT_PRECISION, out_dtype=tl.float32)
    acc_u = tl.dot(x, tl.trans(u), input_precision=DOT_PRECISION, out_dtype=tl.float32)
    for k0 in range(BLOCK_K, H, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k[None, :] < H
        x = tl.load(x_rows + offs_k[None, :], mask=m_mask & k_mask, other=0.0)
        g = tl.load(g_rows + offs_k[None, :], mask=i_mask & k_mask, other=0.0)
        u = tl.load(u_rows + offs_k[None, :], mask=i_mask & k_mask, other=0.0)
        acc_g = tl.dot(x, tl.trans(g), acc_g, input_precision=DOT_PRECISION)
        acc_u = tl.dot(x, tl.trans(u), acc_u, input_precision=DOT_PRECISION)
    # [BLOCK_M, BLOCK_I] activations in the model's dtype; rows past I are 0 (their weights were).
    act = (acc_g / (1.0 + tl.exp(-acc_g)) * acc_u).to(x_ptr.dtype.element_ty)
    d_band = d_ptr + offs_i[:, None].to(tl.int64) * stride_di
    part_rows = part_ptr + pid.to(tl.int64) * M * H + offs_m[:, None] * H
    for n0 in range(0, H, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n[None, :] < H
        d = tl.load(d_band + offs_n[None, :].to(tl.int64) * stride_dn, mask=i_mask & n_mask, other=0.0)
        part = tl.dot(act, d, input_precision=DOT_PRECISION, out_dtype=tl.float32)
        tl.store(part_rows + offs_n[None, :], part, mask=m_mask & n_mask)


@triton.jit
def _sum_partials_kernel(part_ptr, out_ptr, P, M, N, stride_om,
                         BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr):
    """out[row, n] = sum over p of part[p, row, n], in a fixed order."""
    let_next_launch(PDL)
    wait_for_previous(PDL)
    row = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n[None, :] < N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        tile = tl.load(part_ptr + offs_p[:, None].to(tl.int64) * M * N + row * N + offs_n[None, :],
                       mask=(offs_p[:, None] < P) & n_mask, other=0.0)
        acc += tl.sum(tile, axis=0)
    tl.store(out_ptr + row * stride_om + offs_n, acc.to(out_ptr.dtype.element_ty), mask=offs_n < N)


def gated_mlp(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, config: MlpConfig | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, H] (M <= 16) -> down(silu(x @ gate.T) * (x @ up.T)) [M, H] in x's dtype.

    gate_up [2I, H] stacks gate over up; down is [H, I] with any strides (Hugging Face's layout, or
    the transpose of an [I, H] tensor)."""
    config = config or MlpConfig()
    assert x.dim() == 2 and x.shape[0] <= MAX_MLP_ROWS, x.shape
    M, H = x.shape
    I = gate_up.shape[0] // 2
    assert gate_up.shape == (2 * I, H) and gate_up.stride(1) == 1 and down.shape == (H, I), (gate_up.shape, down.shape)
    assert x.dtype == gate_up.dtype == down.dtype
    if x.stride(1) != 1:
        x = x.contiguous()
    if out is None:
        out = new_output((M, H), x.dtype, x.device)
    assert out.shape == (M, H) and out.stride(1) == 1
    if M == 0:
        return out
    programs = triton.cdiv(I, config.block_i)
    part = torch.empty((programs, M, H), dtype=torch.float32, device=x.device)
    pdl = pdl_mode(x.device)
    _gated_mlp_kernel[(programs,)](
        x, gate_up, down, part, M, H, I, x.stride(0), gate_up.stride(0), down.stride(0), down.stride(1),
        BLOCK_M=MAX_MLP_ROWS, BLOCK_I=config.block_i, BLOCK_K=config.block_k, BLOCK_N=config.block_n,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32", PDL=pdl, launch_pdl=pdl > 0,
        num_warps=config.num_warps, num_stages=config.num_stages)
    # The partials of a column block in one load where they are few (one L2 round trip).
    block_p = min(128, triton.next_power_of_2(programs))
    _sum_partials_kernel[(M, triton.cdiv(H, config.reduce_block_n))](
        part, out, programs, M, H, out.stride(0), BLOCK_P=block_p, BLOCK_N=config.reduce_block_n,
        PDL=pdl, launch_pdl=pdl > 0, num_warps=4)
    return out


def rms_norm_mlp(x, residual, norm_w: torch.Tensor, eps: float, gate_up: torch.Tensor, down: torch.Tensor,
                 keep_split: bool = False):
    """Triton version of reference.rms_norm_mlp: (the MLP of RMSNorm(x + residual) * norm_w, the
    new residual). With LLM_FUSED_MLP=1 and at most MAX_MLP_ROWS rows, the norm kernel and
    gated_mlp; else rms_norm_linear's gate/up projection and linear's down projection."""
    config = mlp_config()
    if config is not None and isinstance(x, torch.Tensor) and x.dim() == 2 \
            and x.shape[0] <= MAX_MLP_ROWS and x.dtype == gate_up.dtype:
        h, residual = residual_rms_norm(x, residual, norm_w, eps)
        return gated_mlp(h, gate_up, down, config), residual
    h, residual = rms_norm_linear(x, residual, norm_w, eps, gate_up, gated=True)
    return linear(h, down, keep_split=keep_split), residual


@functools.lru_cache(maxsize=None)
def mlp_config() -> MlpConfig | None:
    """The fused MLP's tiles, or None where it is off. LLM_FUSED_MLP=1 turns it on;
    LLM_MLP_CONFIG=block_i,block_k,block_n,warps,stages[,reduce_block_n] sets its tiles (for
    side-by-side runs)."""
    if os.environ.get("LLM_FUSED_MLP", "0") != "1":
        return None
    setting = os.environ.get("LLM_MLP_CONFIG", "").strip()
    if not setting:
        return MlpConfig()
    return MlpConfig(*[int(v) for v in setting.split(",")])
