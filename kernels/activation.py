"""SiLU-and-mul (SwiGLU gate) in Triton.

x [T, 2I] holds gate then up; out [T, I] = silu(gate) * up, computed in fp32
and rounded once.  2D grid: rows x column blocks, so each program does a
contiguous, vectorisable strip of one row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._alloc import new_output
from .pdl import let_next_launch, pdl_mode, wait_for_previous

__all__ = ["silu_and_mul"]


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, inter, stride_x, stride_o,
                         BLOCK: tl.constexpr, PDL: tl.constexpr):
    let_next_launch(PDL)
    wait_for_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0).to(tl.float32)
    y = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """Triton version of reference.silu_and_mul."""
    assert x.shape[-1] % 2 == 0, "last dim must be 2 * intermediate"
    inter = x.shape[-1] // 2
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = new_output((x2.shape[0], inter), x.dtype, x.device)
    if x2.shape[0] > 0 and inter > 0:
        block = min(1024, triton.next_power_of_2(inter))
        grid = (x2.shape[0], triton.cdiv(inter, block))
        _silu_and_mul_kernel[grid](x2, out, inter, x2.stride(0), out.stride(0),
                                   BLOCK=block, PDL=(pdl := pdl_mode(x.device)), num_warps=4,
                                   launch_pdl=pdl > 0)
    return out.view(*x.shape[:-1], inter)
