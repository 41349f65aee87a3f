"""RoPE (neox / HF rotate_half style), optionally fused with the KV-cache write.

One program per token: it reads the token's cos/sin row once, rotates all
query and key heads, and (rope_and_write_kv) stores the rotated key and the
value straight into the token's cache slot, so k and v are read only once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._alloc import new_output
from .pdl import let_next_launch, pdl_mode, wait_for_previous

__all__ = ["apply_rope", "rope_and_write_kv"]

# Steps of up to this many tokens (every decode bucket) read their positions, slots and cos/sin
# rows before the PDL wait (see the kernel).
EARLY_READS_MAX_TOKENS = 256


@triton.jit
def _rotate_heads(x_ptr, o_ptr, stride_xh, stride_oh, num_heads, cos, sin,
                  HEADS_PAD: tl.constexpr, HALF: tl.constexpr):
    """Rotate num_heads heads at x_ptr; store to o_ptr; return rotated halves."""
    heads = tl.arange(0, HEADS_PAD)
    i = tl.arange(0, HALF)
    mask = (heads < num_heads)[:, None]
    x_off = heads[:, None] * stride_xh + i[None, :]
    o_off = heads[:, None] * stride_oh + i[None, :]
    x1 = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + x_off + HALF, mask=mask, other=0.0).to(tl.float32)
    o1 = x1 * cos[None, :] - x2 * sin[None, :]
    o2 = x2 * cos[None, :] + x1 * sin[None, :]
    tl.store(o_ptr + o_off, o1.to(o_ptr.dtype.element_ty), mask=mask)
    tl.store(o_ptr + o_off + HALF, o2.to(o_ptr.dtype.element_ty), mask=mask)
    return o1, o2


@triton.jit
def _rope_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, cos_sin_ptr,
                 q_out_ptr, k_out_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
                 num_q_heads, num_kv_heads,
                 stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                 stride_qot, stride_qoh, stride_kot, stride_koh, stride_cs,
                 stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
                 HALF: tl.constexpr, Q_HEADS_PAD: tl.constexpr,
                 KV_HEADS_PAD: tl.constexpr, PAGE_SIZE: tl.constexpr,
                 WRITE_CACHE: tl.constexpr, EARLY_READS: tl.constexpr, PDL: tl.constexpr):
    let_next_launch(PDL)
    t = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, HALF)
    if not EARLY_READS:
        # Thousands of programs (a prefill): throughput, not one program's chain, sets the time,
        # and a wait between these reads and q/k's keeps them from overlapping (H100, 8192
        # tokens: 2.70 vs 2.66 TB/s, perf/results/2026-11-24-h100/early_pdl/call8_rope_reads/).
        wait_for_previous(PDL)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    cos = tl.load(cos_sin_ptr + pos * stride_cs + i)
    sin = tl.load(cos_sin_ptr + pos * stride_cs + HALF + i)
    if EARLY_READS:
        # Positions and slots are step inputs and the table is fixed: read before the wait, so
        # a decode step's few programs have their rows when the projection before them ends.
        wait_for_previous(PDL)

    _rotate_heads(q_ptr + t * stride_qt, q_out_ptr + t * stride_qot, stride_qh,
                  stride_qoh, num_q_heads, cos, sin, Q_HEADS_PAD, HALF)
    k1, k2 = _rotate_heads(k_ptr + t * stride_kt, k_out_ptr + t * stride_kot, stride_kh,
                           stride_koh, num_kv_heads, cos, sin, KV_HEADS_PAD, HALF)

    if WRITE_CACHE:
        page = slot // PAGE_SIZE
        in_page = slot % PAGE_SIZE
        heads = tl.arange(0, KV_HEADS_PAD)
        # slot -1 marks padding: the mask turns every store into a no-op.
        mask = ((heads < num_kv_heads) & (slot >= 0))[:, None]
        kc = (k_cache_ptr + page * stride_kcb + in_page * stride_kcs
              + heads[:, None] * stride_kch + i[None, :])
        tl.store(kc, k1.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(kc + HALF, k2.to(k_cache_ptr.dtype.element_ty), mask=mask)
        dims = tl.arange(0, 2 * HALF)
        v = tl.load(v_ptr + t * stride_vt + heads[:, None] * stride_vh + dims[None, :],
                    mask=(heads < num_kv_heads)[:, None], other=0.0)
        vc = (v_cache_ptr + page * stride_vcb + in_page * stride_vcs
              + heads[:, None] * stride_vch + dims[None, :])
        tl.store(vc, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def _launch(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping):
    assert q.dim() == 3 and k.dim() == 3 and q.shape[0] == k.shape[0]
    head_dim = q.shape[2]
    assert k.shape[2] == head_dim and head_dim % 2 == 0
    half = head_dim // 2
    assert half & (half - 1) == 0, "head dim must be a power of 2"
    assert cos_sin_cache.shape[-1] == head_dim, "rotary dim must equal head dim"
    q, k = _last_dim_contiguous(q), _last_dim_contiguous(k)
    cos_sin_cache = _last_dim_contiguous(cos_sin_cache)
    positions = positions.contiguous()
    num_tokens, num_q_heads, _ = q.shape
    num_kv_heads = k.shape[1]
    q_out = new_output(q.shape, q.dtype, q.device)
    k_out = new_output(k.shape, k.dtype, k.device)
    write = k_cache is not None
    if write:
        v = _last_dim_contiguous(v)
        slot_mapping = slot_mapping.contiguous()
        assert v.shape == k.shape and k_cache.shape == v_cache.shape
        assert k_cache.shape[2:] == (num_kv_heads, head_dim)
        assert k_cache.stride(3) == 1 and v_cache.stride(3) == 1
        page_size = k_cache.shape[1]
        cache_strides = (*k_cache.stride()[:3], *v_cache.stride()[:3])
        v_strides = v.stride()[:2]
    else:  # the cache arguments are unused; pass valid tensors anyway
        v = k_cache = v_cache = k
        slot_mapping = positions
        page_size = 1
        cache_strides = (0,) * 6
        v_strides = (0, 0)
    if num_tokens == 0:
        return q_out, k_out
    _rope_kernel[(num_tokens,)](
        q, k, v, positions, cos_sin_cache, q_out, k_out, k_cache, v_cache, slot_mapping,
        num_q_heads, num_kv_heads,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), *v_strides,
        q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
        cos_sin_cache.stride(0), *cache_strides,
        HALF=half, Q_HEADS_PAD=triton.next_power_of_2(num_q_heads),
        KV_HEADS_PAD=triton.next_power_of_2(num_kv_heads), PAGE_SIZE=page_size,
        WRITE_CACHE=write, EARLY_READS=num_tokens <= EARLY_READS_MAX_TOKENS,
        PDL=(pdl := pdl_mode(q.device, signal_at_start=True)), num_warps=4, launch_pdl=pdl > 0)
    return q_out, k_out


def apply_rope(q, k, positions, cos_sin_cache):
    """Triton version of reference.apply_rope -> (q_rot, k_rot)."""
    return _launch(q, k, None, positions, cos_sin_cache, None, None, None)


def rope_and_write_kv(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping):
    """Triton version of reference.rope_and_write_kv -> (q_rot, k_rot).

    Writes k_rot and v into k_cache / v_cache in place at slot_mapping.
    """
    return _launch(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping)
