"""RMSNorm and fused residual-add + RMSNorm in Triton.

One program normalises one row (token); the whole row lives in registers, so
each input element is read once and each output written once — the kernel is
memory bound and its cost is the bytes moved.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._alloc import new_output
from .pdl import let_next_launch, pdl_mode, wait_for_previous

__all__ = ["rms_norm", "fused_add_rms_norm", "residual_rms_norm"]


@triton.jit
def _rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr,
                     hidden, eps,
                     stride_x, stride_r, stride_o, stride_ro,
                     BLOCK_H: tl.constexpr, HAS_RESIDUAL: tl.constexpr, PDL: tl.constexpr):
    let_next_launch(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < hidden
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0)   # a weight: safe before the wait
    wait_for_previous(PDL)
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        # Add in the input dtype (rounded like torch's x + residual) before
        # normalising, because residual_out is what the next layer adds to.
        r = tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = x + r
        tl.store(residual_out_ptr + row * stride_ro + cols, x, mask=mask)
    xf = x.to(tl.float32)
    variance = tl.sum(xf * xf, axis=0) / hidden
    rstd = 1.0 / tl.sqrt(variance + eps)
    # HF Llama: cast the normalised row to the input dtype, then scale.
    normed = (xf * rstd).to(x.dtype)
    tl.store(out_ptr + row * stride_o + cols, normed * w.to(x.dtype), mask=mask)


def _launch_params(hidden: int, elem_size: int):
    block_h = triton.next_power_of_2(hidden)
    # ~16 bytes per thread per access; between 1 and 16 warps.
    num_warps = max(1, min(16, block_h * elem_size // (16 * 32 * 2)))
    return block_h, num_warps


def _rows(x):
    """View x as [rows, hidden] with a contiguous last dim."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _launch(x, residual, weight, eps):
    assert weight.dim() == 1 and weight.shape[0] == x.shape[-1], "weight must be [hidden]"
    assert weight.stride(0) == 1
    hidden = x.shape[-1]
    x2 = _rows(x)
    out = new_output(x2.shape, x.dtype, x.device)
    if residual is not None:
        assert residual.shape == x.shape and residual.dtype == x.dtype
        r2 = _rows(residual)
        r_out = new_output(x2.shape, x.dtype, x.device)
    else:
        r2 = r_out = x2  # unused
    rows = x2.shape[0]
    if rows > 0:
        block_h, num_warps = _launch_params(hidden, x.element_size())
        _rms_norm_kernel[(rows,)](
            x2, r2, weight, out, r_out, hidden, float(eps),
            x2.stride(0), r2.stride(0), out.stride(0), r_out.stride(0),
            BLOCK_H=block_h, HAS_RESIDUAL=residual is not None, PDL=(pdl := pdl_mode(x.device)),
            num_warps=num_warps, launch_pdl=pdl > 0)
    out = out.view(x.shape)
    return out, (r_out.view(x.shape) if residual is not None else None)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Triton version of reference.rms_norm."""
    return _launch(x, None, weight, eps)[0]


def fused_add_rms_norm(x, residual, weight, eps):
    """Triton version of reference.fused_add_rms_norm -> (out, residual_out)."""
    return _launch(x, residual, weight, eps)


def residual_rms_norm(x, residual, weight, eps):
    """A layer's norm with its residual stream -> (out, new residual): x + residual normalised
    (fused_add_rms_norm), or, for the first layer (residual None), x itself, which becomes the
    residual."""
    if residual is None:
        return rms_norm(x, weight, eps), x
    return fused_add_rms_norm(x, residual, weight, eps)
