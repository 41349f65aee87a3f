"""The attention block's input projection for a few rows, with RoPE and the KV-cache write fused in.

qkv = x @ w_qkv.T, then q and k rotated (neox / HF rotate_half) and k, v stored into the paged cache:
in a decode step these are two kernels, the projection and `rope_and_write_kv`, and the second is
a latency-bound hop of ~2 us per layer between the projection and the attention (perf/results/
2026-11-24-h100/bs1_step_interior/). Here the rotation happens on the projection's fp32
accumulators before anything is stored, so the step has one kernel fewer per layer.

Rotation pairs dimension j of a head with j + D/2, so every program owns PAIRS of those pairs of one
head: it reads the weight rows j.. and j + D/2.. (two tiles, like the gated form of
`small_linear`) and holds both halves of each rotated pair. Program (head, p) covers pairs
[p * PAIRS, (p + 1) * PAIRS) of head `head`, where heads count q heads, then k heads, then v heads
(the rows of the packed weight); v heads pass through unrotated.

Steps with more rows (prefill) keep the two kernels: cuBLAS projection, then `rope_and_write_kv`.
Status: opt-in (LLM_FUSED_QKV_ROPE=1) until a GPU run has measured it; see qkv_rope_write_kv.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from . import reference
from ._alloc import new_output
from .linear import MAX_SMALL_M, linear, small_linear_on
from .pdl import let_next_launch, pdl_mode, wait_for_previous
from .rope import rope_and_write_kv

__all__ = ["qkv_rope_write_kv", "PAIRS"]

PAIRS = 16          # rotation pairs per program: 32 weight rows, the 16-wide minimum of tl.dot twice
BLOCK_K = 256       # the tiles of the unfused projection of this shape (linear.choose_linear_config)


@triton.jit
def _qkv_rope_kernel(x_ptr, w_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, slot_ptr, cos_sin_ptr,
                     M, K, stride_xm, stride_wn, stride_qt, stride_qh, stride_cs,
                     stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
                     NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HALF: tl.constexpr,
                     PAGE_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, PAIRS: tl.constexpr,
                     BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr, PDL: tl.constexpr):
    let_next_launch(PDL)
    head = tl.program_id(0)
    offs_j = tl.program_id(1) * PAIRS + tl.arange(0, PAIRS)    # first-half dims of the pairs
    offs_m = tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    first_rows = w_ptr + (head * 2 * HALF + offs_j)[:, None].to(tl.int64) * stride_wn
    second_rows = first_rows + HALF * stride_wn
    x_rows = x_ptr + offs_m[:, None] * stride_xm

    # Before the PDL wait: the first weight tiles, the positions and slots (step inputs written by
    # torch copies, see pdl.py) and the fixed cos/sin table; none is written by the kernels before.
    offs_k = tl.arange(0, BLOCK_K)
    k_ok = offs_k[None, :] < K
    w1 = tl.load(first_rows + offs_k[None, :], mask=k_ok, other=0.0)
    w2 = tl.load(second_rows + offs_k[None, :], mask=k_ok, other=0.0)
    pos = tl.load(pos_ptr + offs_m, mask=m_ok, other=0).to(tl.int64)
    cs_rows = cos_sin_ptr + pos[:, None] * stride_cs + offs_j[None, :]
    cos = tl.load(cs_rows, mask=m_ok[:, None], other=1.0)
    sin = tl.load(cs_rows + HALF, mask=m_ok[:, None], other=0.0)
    slot = tl.load(slot_ptr + offs_m, mask=m_ok, other=-1).to(tl.int64)
    wait_for_previous(PDL)

    x = tl.load(x_rows + offs_k[None, :], mask=m_ok[:, None] & k_ok, other=0.0)
    a = tl.dot(x, tl.trans(w1), input_precision=DOT_PRECISION, out_dtype=tl.float32)
    b = tl.dot(x, tl.trans(w2), input_precision=DOT_PRECISION, out_dtype=tl.float32)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k[None, :] < K
        x = tl.load(x_rows + offs_k[None, :], mask=m_ok[:, None] & k_ok, other=0.0)
        w1 = tl.load(first_rows + offs_k[None, :], mask=k_ok, other=0.0)
        w2 = tl.load(second_rows + offs_k[None, :], mask=k_ok, other=0.0)
        a = tl.dot(x, tl.trans(w1), a, input_precision=DOT_PRECISION)
        b = tl.dot(x, tl.trans(w2), b, input_precision=DOT_PRECISION)

    # q and k heads rotate; v heads pass through (cos 1, sin 0).
    is_v = head >= NUM_Q_HEADS + NUM_KV_HEADS
    cos = tl.where(is_v, 1.0, cos)
    sin = tl.where(is_v, 0.0, sin)
    first = a * cos - b * sin
    second = b * cos + a * sin

    if head < NUM_Q_HEADS:
        q_ptrs = q_out_ptr + offs_m[:, None] * stride_qt + head * stride_qh + offs_j[None, :]
        tl.store(q_ptrs, first.to(q_out_ptr.dtype.element_ty), mask=m_ok[:, None])
        tl.store(q_ptrs + HALF, second.to(q_out_ptr.dtype.element_ty), mask=m_ok[:, None])
    else:
        # slot -1 marks padding: no store.
        ok = (m_ok & (slot >= 0))[:, None]
        page = slot // PAGE_SIZE
        in_page = slot % PAGE_SIZE
        if head < NUM_Q_HEADS + NUM_KV_HEADS:
            kv_head = head - NUM_Q_HEADS
            c_ptrs = (k_cache_ptr + page[:, None] * stride_kcb + in_page[:, None] * stride_kcs
                      + kv_head * stride_kch + offs_j[None, :])
            tl.store(c_ptrs, first.to(k_cache_ptr.dtype.element_ty), mask=ok)
            tl.store(c_ptrs + HALF, second.to(k_cache_ptr.dtype.element_ty), mask=ok)
        else:
            kv_head = head - NUM_Q_HEADS - NUM_KV_HEADS
            c_ptrs = (v_cache_ptr + page[:, None] * stride_vcb + in_page[:, None] * stride_vcs
                      + kv_head * stride_vch + offs_j[None, :])
            tl.store(c_ptrs, first.to(v_cache_ptr.dtype.element_ty), mask=ok)
            tl.store(c_ptrs + HALF, second.to(v_cache_ptr.dtype.element_ty), mask=ok)


def fused_qkv_rope(x, w_qkv, num_q_heads, num_kv_heads, positions, cos_sin_cache,
                   k_cache, v_cache, slot_mapping) -> torch.Tensor:
    """The fused kernel for x [M <= 16, K]: returns q [M, Hq, D] rotated; k rotated and v stored
    at slot_mapping in the caches."""
    M, K = x.shape
    head_dim = k_cache.shape[3]
    half = head_dim // 2
    num_heads = num_q_heads + 2 * num_kv_heads
    assert M <= MAX_SMALL_M and w_qkv.shape == (num_heads * head_dim, K), (x.shape, w_qkv.shape)
    assert half % PAIRS == 0, f"head dim must be a multiple of {2 * PAIRS}"
    assert x.dtype == w_qkv.dtype and w_qkv.stride(1) == 1
    assert cos_sin_cache.shape[-1] == head_dim and cos_sin_cache.stride(1) == 1
    assert k_cache.shape == v_cache.shape and k_cache.shape[2] == num_kv_heads
    assert k_cache.stride(3) == 1 and v_cache.stride(3) == 1
    if x.stride(1) != 1:
        x = x.contiguous()
    q = new_output((M, num_q_heads, head_dim), x.dtype, x.device)
    if M == 0:
        return q
    positions, slot_mapping = positions.contiguous(), slot_mapping.contiguous()
    _qkv_rope_kernel[(num_heads, half // PAIRS)](
        x, w_qkv, q, k_cache, v_cache, positions, slot_mapping, cos_sin_cache,
        M, K, x.stride(0), w_qkv.stride(0), q.stride(0), q.stride(1), cos_sin_cache.stride(0),
        *k_cache.stride()[:3], *v_cache.stride()[:3],
        NUM_Q_HEADS=num_q_heads, NUM_KV_HEADS=num_kv_heads, HALF=half, PAGE_SIZE=k_cache.shape[1],
        BLOCK_M=MAX_SMALL_M, PAIRS=PAIRS, BLOCK_K=BLOCK_K,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        PDL=(pdl := pdl_mode(x.device)), launch_pdl=pdl > 0, num_warps=4, num_stages=5)
    return q


def qkv_rope_write_kv(x, w_qkv, num_q_heads, num_kv_heads, positions, cos_sin_cache,
                      k_cache, v_cache, slot_mapping):
    """Triton version of reference.qkv_rope_write_kv: the projection and then rope_and_write_kv;
    with LLM_FUSED_QKV_ROPE=1 the fused kernel for steps of <= 16 rows.

    Off by default until measured on the GPU: it passes its tests in Triton's interpreter, but no
    device run has compiled it or timed the engine with it yet (on a GPU: its tests in
    tests/kernels/test_kernels_qkv_rope.py, then `bash perf/ab_env_bs1.sh LLM_FUSED_QKV_ROPE`)."""
    head_dim = k_cache.shape[3]
    if (x.shape[0] <= MAX_SMALL_M and small_linear_on() and _fused_on()
            and (head_dim // 2) % PAIRS == 0):
        return fused_qkv_rope(x, w_qkv, num_q_heads, num_kv_heads, positions, cos_sin_cache,
                              k_cache, v_cache, slot_mapping)
    q, k, v = reference.split_qkv(linear(x, w_qkv), num_q_heads, num_kv_heads, head_dim)
    q, _ = rope_and_write_kv(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping)
    return q


@functools.lru_cache(maxsize=None)
def _fused_on() -> bool:
    return os.environ.get("LLM_FUSED_QKV_ROPE", "0") == "1"
