"""Unified paged attention (prefill, chunked prefill and decode) in Triton.

One kernel family serves every step shape.  A program owns
    (one query tile of one sequence) x (one KV head) [x (one KV split)]
and streams the sequence's KV blocks through an online softmax.  Steps with
at most one query tile per sequence (decode) use a (1, heads, sequences)
grid; longer queries use a flat grid over all sequences' tiles whose size
depends only on the token and sequence counts, so a mixed prefill/decode
step can be captured in a CUDA graph per token-count bucket.

Query tile layout ("rows"): the BLOCK_Q query tokens of the tile times the
GROUP query heads that share one KV head, padded to GROUP_PAD (a power of
two), flattened to BLOCK_M = BLOCK_Q * GROUP_PAD rows.  Row r is token
r // GROUP_PAD, query head kv_head * GROUP + r % GROUP_PAD.  Each K/V tile is
therefore loaded once for the whole GQA group and used in one matrix product.

Causal masking is by absolute position: query token i of a sequence with
qlen query tokens and ctx cached tokens sits at ctx - qlen + i.  KV tiles
that every row of the query tile may see completely are processed by a loop
without any masks; only the few tiles on the diagonal (and the ragged end of
the context) pay for masking.

A mixed step (prefill chunks beside single-token decodes) runs two launches:
the flat grid takes the sequences longer than a decode tile (SHORT_Q query
tokens) and the decode grid, with its 16-row tiles, takes the rest.  On the
flat grid alone every decode would fill a whole prefill tile (128 rows for
4 real ones with GQA 4) and stream its context through it: on the H100 that
was a third of a long-context mixed step's attention time.

Split-KV (flash-decoding): with num_splits > 1 each program handles a
contiguous, BLOCK_N-aligned share of the KV range and writes un-normalised
partial results (running max m, running sum l, accumulator acc) in fp32; a
second small kernel merges them, or, on the decode grid with merge counters,
the last of a sequence's splits to finish merges them in the same launch.
choose_num_splits (kernels/heuristics.py) decides when splitting pays off.

A decode layer's RoPE and K/V-cache write can ride in the same launch
(rope_and_paged_attention): each program rotates its rows of q as it loads
them, and the program whose KV share holds a new token rotates that token's
k and writes k and v to the cache before reading its tiles.  With the merge
that makes one kernel where there were three (RoPE, attention, merge), each
boundary of which cost a batch-1 step a launch ramp and a drain.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._alloc import new_output
from .heuristics import choose_num_splits, choose_prefill_splits
from .pdl import let_next_launch, pdl_mode, wait_for_previous
from .rope import rope_and_write_kv

__all__ = ["paged_attention", "rope_and_paged_attention", "attention_tile_map", "choose_num_splits", "AttnConfig", "default_config"]

_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class AttnConfig:
    """Tile sizes and launch parameters of the attention kernel.

    block_m: rows per program = query tokens x padded GQA group (power of 2,
    >= 16 for tl.dot).  block_n: KV tokens per inner-loop step (power of 2,
    >= 16).  num_warps / num_stages: Triton launch parameters (num_stages is
    the software-pipelining depth of the K/V loads).
    """

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3


# Triton reads TRITON_INTERPRET when it is imported, so this cannot change later.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def default_config(max_seqlen_q: int, group_pad: int, head_dim: int,
                   dtype: torch.dtype, num_splits: int = 1,
                   max_context_len: int = 0) -> AttnConfig:
    """Pick tile sizes from the step shape (host ints only, no sync).

    Decode-like steps need few rows per program (the tile is mostly padding
    otherwise) and are bandwidth bound; prefill needs large row tiles so the
    tensor cores have enough work per loaded K/V tile.
    """
    rows = max(1, max_seqlen_q) * group_pad
    if _INTERPRET:
        # CPU interpreter: small tiles so tests cross many tile boundaries.
        return AttnConfig(block_m=max(16, min(32, triton.next_power_of_2(rows))),
                          block_n=16, num_warps=4, num_stages=1)
    small_tiles = dtype == torch.float32 or head_dim > 128  # register / smem budget
    if rows <= 16 and num_splits > 1 and not small_tiles:
        # Split decode (small batch): each program's share is short and its time a chain of
        # round trips, so a share of up to 256 tokens takes one or two 128-token tiles, the
        # first read before the PDL wait. H100, B=1 x 4096 in a graph of 16 calls: 32 splits
        # n128/w4/s1 1.68 TB/s vs n64/w4/s1 1.43, n64/w4/s2 1.29; 16 splits n128 1.34 vs n64
        # 1.24 (perf/results/2026-11-24-h100/early_pdl/).
        tokens_per_split = -(-max(1, max_context_len) // num_splits)
        if tokens_per_split <= 256:
            return AttnConfig(block_m=max(16, group_pad), block_n=128, num_warps=4, num_stages=1)
        return AttnConfig(block_m=max(16, group_pad), block_n=64, num_warps=4, num_stages=2)
    if rows <= 16:
        # Decode: 16 rows (the tl.dot minimum), long KV tiles to keep many
        # bytes in flight.  H100 sweep, B=64 x 4096, GQA 32/8, D=128 bf16:
        # n128/w4/s3 2.90 TB/s vs n64/w4/s3 2.57 TB/s.
        return AttnConfig(block_m=max(16, group_pad), block_n=32 if small_tiles else 128,
                          num_warps=4, num_stages=3 if not small_tiles else 2)
    if rows <= 64:
        return AttnConfig(block_m=max(64, group_pad), block_n=32 if small_tiles else 64,
                          num_warps=4, num_stages=3 if not small_tiles else 2)
    if small_tiles:
        return AttnConfig(block_m=max(64, group_pad), block_n=32, num_warps=4, num_stages=2)
    # Prefill.  H100 sweep, L=8192, H=32, D=128 bf16: 128x128/w8/s3 357
    # TFLOP/s vs 128x64/w8/s3 321 (SDPA flash 315).
    return AttnConfig(block_m=max(128, group_pad), block_n=128, num_warps=8, num_stages=3)


# --------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------

@triton.jit
def _attend_kv_tile(acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, bt_row_ptr,
                    kv_head, start, kv_end, row_pos, qk_scale,
                    stride_kb, stride_ks, stride_kh,
                    stride_vb, stride_vs, stride_vh,
                    PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """Fold KV positions [start, start + BLOCK_N) into the online softmax.

    MASKED=False is only used for tiles every row may fully see (and that lie
    inside the context), so no bounds or causal checks are needed there.
    """
    cols = start + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    # Page lookup: one block_tables entry per KV token (repeats hit in L1).
    if MASKED:
        col_ok = cols < kv_end
        page = tl.load(bt_row_ptr + cols // PAGE_SIZE, mask=col_ok, other=0)
    else:
        page = tl.load(bt_row_ptr + cols // PAGE_SIZE)
    page = page.to(tl.int64)  # page * stride can exceed 2**31
    in_page = cols % PAGE_SIZE
    k_ptrs = (k_cache_ptr + page[:, None] * stride_kb
              + (in_page * stride_ks + kv_head * stride_kh)[:, None] + dims[None, :])
    v_ptrs = (v_cache_ptr + page[:, None] * stride_vb
              + (in_page * stride_vs + kv_head * stride_vh)[:, None] + dims[None, :])
    if MASKED:
        k = tl.load(k_ptrs, mask=col_ok[:, None], other=0.0)
    else:
        k = tl.load(k_ptrs)

    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if MASKED:
        s = tl.where(cols[None, :] <= row_pos[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:
        # A row may see nothing in this tile yet (m_new = -inf); subtracting 0
        # instead keeps exp2(-inf - -inf) = NaN out of alpha and p.
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_sub = m_new
    alpha = tl.math.exp2(m_i - m_sub)
    p = tl.math.exp2(s - m_sub[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)

    if MASKED:
        # Masked V rows must be 0, not garbage: 0 * NaN would poison acc.
        v = tl.load(v_ptrs, mask=col_ok[:, None], other=0.0)
    else:
        v = tl.load(v_ptrs)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _load_old_kv_tile(k_cache_ptr, v_cache_ptr, bt_row_ptr, kv_head, start, valid,
                      stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                      PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    """K and V of positions [start, start + BLOCK_N) (zeros where `valid` is false), for a tile
    read before the PDL wait: only positions cached by earlier steps may be read there."""
    cols = start + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    ok = (cols >= 0) & valid
    page = tl.load(bt_row_ptr + cols // PAGE_SIZE, mask=ok, other=0).to(tl.int64)
    in_page = cols % PAGE_SIZE
    k = tl.load(k_cache_ptr + page[:, None] * stride_kb
                + (in_page * stride_ks + kv_head * stride_kh)[:, None] + dims[None, :],
                mask=ok[:, None], other=0.0)
    v = tl.load(v_cache_ptr + page[:, None] * stride_vb
                + (in_page * stride_vs + kv_head * stride_vh)[:, None] + dims[None, :],
                mask=ok[:, None], other=0.0)
    return k, v


@triton.jit
def _attend_loaded_tile(acc, m_i, l_i, q, k, v, qk_scale, DOT_PRECISION: tl.constexpr):
    """The unmasked online-softmax step of _attend_kv_tile on a K/V tile already loaded."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _rope_tables(cos_sin_ptr, pos_ptr, token_idx, ok, stride_cs, HEAD_DIM: tl.constexpr):
    """cos and sin [R, HEAD_DIM] (each half repeated) of tokens token_idx [R]; the table's rows
    are [cos | sin] of HEAD_DIM / 2 each."""
    half_d = tl.arange(0, HEAD_DIM) % (HEAD_DIM // 2)
    pos = tl.load(pos_ptr + token_idx, mask=ok, other=0).to(tl.int64)
    row = cos_sin_ptr + pos[:, None] * stride_cs + half_d[None, :]
    return tl.load(row), tl.load(row + HEAD_DIM // 2)


@triton.jit
def _load_rotated(row_ptrs, mask, cos, sin, HEAD_DIM: tl.constexpr):
    """Rows [R, HEAD_DIM] at row_ptrs, rotated (RoPE, rotate-half) in fp32 and rounded to their
    dtype, as the RoPE kernel writes them."""
    dims = tl.arange(0, HEAD_DIM)
    partner = (dims + HEAD_DIM // 2) % HEAD_DIM
    x = tl.load(row_ptrs + dims[None, :], mask=mask, other=0.0)
    xp = tl.load(row_ptrs + partner[None, :], mask=mask, other=0.0)
    sign = tl.where(dims < HEAD_DIM // 2, -1.0, 1.0)
    return (x.to(tl.float32) * cos + sign[None, :] * xp.to(tl.float32) * sin).to(x.dtype)


@triton.jit
def merge_group_partials(part_m_ptr, part_l_ptr, part_acc_ptr, rows, split_stride, num_splits,
                         row_ok, ROWS: tl.constexpr, SPLITS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr):
    """merge_split_partials for ROWS (token, head) rows at once -> [ROWS, HEAD_DIM] fp32: split s of
    row r is at rows[r] + s * split_stride. The splits are taken 16 at a time (registers), every
    chunk's loads independent of the others'."""
    CHUNK: tl.constexpr = 16 if SPLITS_PAD > 16 else SPLITS_PAD
    s = tl.arange(0, SPLITS_PAD)
    ok = row_ok[:, None] & (s[None, :] < num_splits)
    m = tl.load(part_m_ptr + rows[:, None] + s[None, :] * split_stride, mask=ok,
                other=float("-inf"), cache_modifier=".cg")
    m_max = tl.max(m, 1)
    m_max = tl.where(m_max > float("-inf"), m_max, 0.0)   # no -inf - -inf for an empty sequence
    dims = tl.arange(0, HEAD_DIM)
    c = tl.arange(0, CHUNK)
    num = tl.zeros([ROWS, HEAD_DIM], dtype=tl.float32)
    den = tl.zeros([ROWS], dtype=tl.float32)
    for c0 in tl.static_range(0, SPLITS_PAD, CHUNK):
        idx = rows[:, None] + (c0 + c)[None, :] * split_stride
        c_ok = row_ok[:, None] & ((c0 + c)[None, :] < num_splits)
        mc = tl.load(part_m_ptr + idx, mask=c_ok, other=float("-inf"), cache_modifier=".cg")
        seen = c_ok & (mc > float("-inf"))
        lc = tl.load(part_l_ptr + idx, mask=seen, other=0.0, cache_modifier=".cg")
        accc = tl.load(part_acc_ptr + idx[:, :, None] * HEAD_DIM + dims[None, None, :],
                       mask=seen[:, :, None], other=0.0, cache_modifier=".cg")
        w = tl.where(seen, tl.math.exp2(mc - m_max[:, None]), 0.0)
        den += tl.sum(lc * w, 1)
        num += tl.sum(accc * w[:, :, None], 1)
    return num / tl.where(den > 0, den, 1.0)[:, None]


@triton.jit
def _paged_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, k_early_ptr, v_early_ptr, block_tables_ptr, context_lens_ptr,
    cu_seqlens_q_ptr, tile_seqs_ptr, out_ptr, part_m_ptr, part_l_ptr, part_acc_ptr,
    k_new_ptr, v_new_ptr, pos_ptr, cos_sin_ptr, slot_ptr, counters_ptr,
    qk_scale, num_splits, num_tokens, num_seqs,
    stride_qt, stride_qh, stride_knt, stride_knh, stride_vnt, stride_vnh, stride_cs,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_bt, stride_ot, stride_oh,
    NUM_Q_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr, FLAT: tl.constexpr, PDL: tl.constexpr,
    SHORT_Q: tl.constexpr, ROPE: tl.constexpr, MERGE_LAST: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    # Until the PDL wait below, only the step's index inputs (written before any PDL kernel starts,
    # see pdl.py)
    # and KV positions cached by earlier steps are read; q, this step's K/V and the outputs wait.
    let_next_launch(PDL)
    BLOCK_M: tl.constexpr = BLOCK_Q * GROUP_PAD
    kv_head = tl.program_id(1) // num_splits
    split = tl.program_id(1) % num_splits
    # Programs are visited last-first: with causal masking a sequence's last
    # query tiles do the most work, and starting them first evens out the
    # tail of the launch.
    pid = tl.num_programs(0) - 1 - tl.program_id(0)
    if FLAT:
        # Grid: (query tiles of all sequences, kv heads * splits).  Sequence
        # s owns the tiles [cu[s] // BLOCK_Q + s, cu[s+1] // BLOCK_Q + s + 1),
        # which covers its cdiv(qlen, BLOCK_Q) tiles (spares exit below); the
        # grid size T // BLOCK_Q + B depends on host ints only, so a CUDA
        # graph can be captured once per token-count bucket.  Which sequence
        # a tile belongs to comes from tile_seqs (attention_tile_map, made
        # once per step): one load instead of a binary search of dependent
        # loads in each of the thousands of programs of a mixed step.
        seq = tl.load(tile_seqs_ptr + pid)
        q_tile = pid - (tl.load(cu_seqlens_q_ptr + seq) // BLOCK_Q + seq)
    else:
        # Grid: (query tiles of the longest query, kv heads * splits, sequences).
        q_tile = pid
        seq = tl.program_id(2)

    # All three scalars are loaded before any branch so their DRAM round
    # trips overlap (decode programs are latency bound on this chain).
    q_begin = tl.load(cu_seqlens_q_ptr + seq)
    q_end = tl.load(cu_seqlens_q_ptr + seq + 1)
    ctx = tl.load(context_lens_ptr + seq)
    qlen = q_end - q_begin
    q_start = q_tile * BLOCK_Q
    # Programs without work exit, but only after the PDL wait: a kernel must not complete before
    # its predecessor has (pdl.py), and a launch may be all such programs (a mixed step whose
    # sequences all belong to the other grid).
    # The grid is sized for max_seqlen_q (q_start >= qlen also covers qlen 0). Which launch owns
    # the sequence (see the module docstring): the flat grid those longer than SHORT_Q tokens
    # (SHORT_Q = 0: all), the decode grid those of at most one tile.
    if FLAT:
        no_work = (q_start >= qlen) | (qlen <= SHORT_Q)
    else:
        no_work = (q_start >= qlen) | (qlen > BLOCK_Q)
    if no_work:
        wait_for_previous(PDL)
        return

    # Absolute positions: rows of this tile see KV [0, row_pos].
    first_pos = ctx - qlen + q_start
    kv_end = ctx - qlen + tl.minimum(q_start + BLOCK_Q, qlen)  # exclusive
    # KV tiles ending at or before first_pos + 1 are visible to every row.
    full_end = ((first_pos + 1) // BLOCK_N) * BLOCK_N
    if SPLIT:
        tiles_per_split = tl.cdiv(tl.cdiv(kv_end, BLOCK_N), num_splits)
        lo = split * tiles_per_split * BLOCK_N
        hi = tl.minimum(lo + tiles_per_split * BLOCK_N, kv_end)
    else:
        lo = 0
        hi = kv_end

    rows = tl.arange(0, BLOCK_M)
    tok = q_start + rows // GROUP_PAD
    head_in_group = rows % GROUP_PAD
    row_ok = (tok < qlen) & (head_in_group < GROUP)
    head = kv_head * GROUP + head_in_group
    row_pos = ctx - qlen + tok
    dims = tl.arange(0, HEAD_DIM)
    token_idx = (q_begin + tok).to(tl.int64)

    bt_row_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    # A split decode program has a tile or two of work, so its time is a chain of round trips
    # (block table, K, V): it reads its first tile while the kernels before it still run, when
    # that tile is unmasked and holds only tokens cached by earlier steps (< ctx - qlen).
    PREFETCH: tl.constexpr = SPLIT and not FLAT
    first_end = lo + BLOCK_N
    # (Such a tile is also unmasked: on the decode grid full_end is ctx - qlen + 1 rounded down
    # to whole tiles, and first_end is a whole number of tiles.)
    prefetched = (first_end <= hi) & (first_end <= ctx - qlen)
    if PREFETCH:
        k0, v0 = _load_old_kv_tile(k_early_ptr, v_early_ptr, bt_row_ptr, kv_head, lo, prefetched,
                                   stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                                   PAGE_SIZE, HEAD_DIM, BLOCK_N)
    if ROPE:
        # Positions, slots and the cos/sin table are step inputs or fixed: read before the wait.
        # Rows' tables rotate q; the tile's tokens' own (new_*) rotate and place their k and v.
        q_cos, q_sin = _rope_tables(cos_sin_ptr, pos_ptr, token_idx, tok < qlen, stride_cs, HEAD_DIM)
        new_tok = q_start + tl.arange(0, BLOCK_Q)
        new_ok = new_tok < qlen
        new_idx = (q_begin + new_tok).to(tl.int64)
        new_cos, new_sin = _rope_tables(cos_sin_ptr, pos_ptr, new_idx, new_ok, stride_cs, HEAD_DIM)
        new_slot = tl.load(slot_ptr + new_idx, mask=new_ok, other=-1).to(tl.int64)
        # A new token is written by the one program whose KV share holds its position.
        new_pos = ctx - qlen + new_tok
        new_mine = new_ok & (new_pos >= lo) & (new_pos < hi) & (new_slot >= 0)
    wait_for_previous(PDL)

    q_ptrs = q_ptr + token_idx[:, None] * stride_qt + head[:, None] * stride_qh
    if ROPE:
        q = _load_rotated(q_ptrs, row_ok[:, None], q_cos, q_sin, HEAD_DIM)
        k_new = _load_rotated(k_new_ptr + new_idx[:, None] * stride_knt + kv_head * stride_knh,
                              new_ok[:, None], new_cos, new_sin, HEAD_DIM)
        v_new = tl.load(v_new_ptr + new_idx[:, None] * stride_vnt + kv_head * stride_vnh + dims[None, :],
                        mask=new_ok[:, None], other=0.0)
        new_page = new_slot // PAGE_SIZE
        new_in_page = new_slot % PAGE_SIZE
        tl.store(k_cache_ptr + new_page[:, None] * stride_kb
                 + (new_in_page * stride_ks + kv_head * stride_kh)[:, None] + dims[None, :],
                 k_new.to(k_cache_ptr.dtype.element_ty), mask=new_mine[:, None])
        tl.store(v_cache_ptr + new_page[:, None] * stride_vb
                 + (new_in_page * stride_vs + kv_head * stride_vh)[:, None] + dims[None, :],
                 v_new.to(v_cache_ptr.dtype.element_ty), mask=new_mine[:, None])
        # The tiles below read these slots back: a CTA barrier makes every thread's stores
        # visible to the whole program (no other program reads them: the share is this one's).
        tl.debug_barrier()
    else:
        q = tl.load(q_ptrs + dims[None, :], mask=row_ok[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    bulk_start = lo
    if PREFETCH:
        if prefetched:
            acc, m_i, l_i = _attend_loaded_tile(acc, m_i, l_i, q, k0, v0, qk_scale, DOT_PRECISION)
            bulk_start = first_end

    # Bulk of the context: no masks at all.
    for start in range(bulk_start, tl.minimum(hi, full_end), BLOCK_N):
        acc, m_i, l_i = _attend_kv_tile(
            acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, bt_row_ptr, kv_head,
            start, kv_end, row_pos, qk_scale,
            stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
            PAGE_SIZE, HEAD_DIM, BLOCK_N, False, DOT_PRECISION)
    # Diagonal and ragged end: causal + bounds masks.
    for start in range(tl.maximum(lo, full_end), hi, BLOCK_N):
        acc, m_i, l_i = _attend_kv_tile(
            acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, bt_row_ptr, kv_head,
            start, kv_end, row_pos, qk_scale,
            stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
            PAGE_SIZE, HEAD_DIM, BLOCK_N, True, DOT_PRECISION)

    if SPLIT:
        # Partials are [num_splits, num_tokens, NUM_Q_HEADS(, HEAD_DIM)] fp32.
        # An empty split (most splits of a short sequence in a step that also
        # holds a long one) stores only m=-inf and l=0: the merge reads no
        # accumulator where m is -inf, so that one is never written.
        part_row = (split * num_tokens + token_idx) * NUM_Q_HEADS + head
        tl.store(part_m_ptr + part_row, m_i, mask=row_ok)
        tl.store(part_l_ptr + part_row, l_i, mask=row_ok)
        if hi > lo:
            tl.store(part_acc_ptr + part_row[:, None] * HEAD_DIM + dims[None, :], acc,
                     mask=row_ok[:, None])
        if MERGE_LAST:
            # The last of the sequence's splits to finish (for this KV head) merges them all, so
            # no merge kernel follows. Every thread's partial stores are issued before thread 0
            # arrives (CTA barrier, then a release at GPU scope); the acquire makes the other
            # programs' partials visible to the merging program.
            tl.debug_barrier()
            counter = counters_ptr + seq * (NUM_Q_HEADS // GROUP) + kv_head
            arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
            if arrived == num_splits - 1:
                tl.store(counter, 0)   # ready for the next launch; no program of this one is left
                g = tl.arange(0, GROUP_PAD)
                for t in tl.static_range(BLOCK_Q):
                    if q_start + t < qlen:
                        t_idx = (q_begin + q_start + t).to(tl.int64)
                        o = merge_group_partials(part_m_ptr, part_l_ptr, part_acc_ptr,
                                                 t_idx * NUM_Q_HEADS + kv_head * GROUP + g,
                                                 num_tokens * NUM_Q_HEADS, num_splits, g < GROUP,
                                                 GROUP_PAD, SPLITS_PAD, HEAD_DIM)
                        tl.store(out_ptr + t_idx * stride_ot + (kv_head * GROUP + g)[:, None] * stride_oh
                                 + dims[None, :], o.to(out_ptr.dtype.element_ty), mask=(g < GROUP)[:, None])
    else:
        # Every valid row sees at least position 0, so l_i > 0 there.
        l_safe = tl.where(row_ok, l_i, 1.0)
        o = acc / l_safe[:, None]
        o_ptrs = out_ptr + token_idx[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :]
        tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def merge_split_partials(part_m_ptr, part_l_ptr, part_acc_ptr, part_row, split_ok, HEAD_DIM: tl.constexpr):
    """One (token, head)'s output [HEAD_DIM] in fp32 from its split partials at rows `part_row`:
    sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s. Splits that saw nothing (m = -inf) weigh 0
    and may not have written acc; a token no split saw (an empty sequence) gets 0. The loads skip
    L1: kernels/decode_block.py merges partials other programs of the same launch wrote."""
    dims = tl.arange(0, HEAD_DIM)
    m = tl.load(part_m_ptr + part_row, mask=split_ok, other=float("-inf"), cache_modifier=".cg")
    seen = split_ok & (m > float("-inf"))
    l = tl.load(part_l_ptr + part_row, mask=seen, other=0.0, cache_modifier=".cg")
    acc = tl.load(part_acc_ptr + part_row[:, None] * HEAD_DIM + dims[None, :], mask=seen[:, None],
                  other=0.0, cache_modifier=".cg")
    m_max = tl.max(m, 0)
    m_max = tl.where(m_max > float("-inf"), m_max, 0.0)   # no -inf - -inf for an empty sequence
    w = tl.where(seen, tl.math.exp2(m - m_max), 0.0)
    denom = tl.sum(l * w, 0)
    return tl.sum(acc * w[:, None], 0) / tl.where(denom > 0, denom, 1.0)


@triton.jit
def _merge_splits_kernel(part_m_ptr, part_l_ptr, part_acc_ptr, out_ptr,
                         num_splits, num_tokens, stride_ot, stride_oh,
                         NUM_Q_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                         SPLITS_PAD: tl.constexpr, PDL: tl.constexpr):
    """out[t, h] = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s."""
    let_next_launch(PDL)
    wait_for_previous(PDL)
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, HEAD_DIM)
    part_row = (splits * num_tokens + token) * NUM_Q_HEADS + head
    o = merge_split_partials(part_m_ptr, part_l_ptr, part_acc_ptr, part_row, splits < num_splits, HEAD_DIM)
    tl.store(out_ptr + token * stride_ot + head * stride_oh + dims,
             o.to(out_ptr.dtype.element_ty))


# --------------------------------------------------------------------------
# Host wrapper
# --------------------------------------------------------------------------

def _check_inputs(q, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q):
    assert q.dim() == 3 and k_cache.dim() == 4, "q [T,Hq,D], cache [N,bs,Hkv,D]"
    assert k_cache.shape == v_cache.shape, "k_cache and v_cache must match"
    assert q.shape[2] == k_cache.shape[3], "head dim mismatch"
    assert q.shape[1] % k_cache.shape[2] == 0, "Hq must be a multiple of Hkv"
    head_dim = q.shape[2]
    assert head_dim >= 16 and head_dim & (head_dim - 1) == 0, "head dim: power of 2 >= 16"
    assert k_cache.stride(3) == 1 and v_cache.stride(3) == 1, "cache head dim must be contiguous"
    assert block_tables.dtype in (torch.int32, torch.int64)
    assert block_tables.stride(1) == 1, "block_tables rows must be contiguous"
    assert context_lens.is_contiguous() and cu_seqlens_q.is_contiguous()
    assert cu_seqlens_q.numel() == context_lens.numel() + 1
    assert block_tables.shape[0] == context_lens.numel()


def _block_q(max_seqlen_q, group_pad, head_dim, dtype, config=None) -> int:
    """Query tokens per tile (it does not depend on the split count)."""
    return max((config or default_config(max_seqlen_q, group_pad, head_dim, dtype)).block_m,
               group_pad) // group_pad


def attention_tile_map(cu_seqlens_q, num_tokens, max_seqlen_q, num_q_heads, num_kv_heads,
                       head_dim, dtype):
    """The sequence of every query tile of the flat grid, computed on the device from
    cu_seqlens_q (no sync, so it can sit in a CUDA graph); None when the step takes the decode
    grid. A model computes it once per step and passes it to each layer's paged_attention."""
    block_q = _block_q(max_seqlen_q, triton.next_power_of_2(num_q_heads // num_kv_heads), head_dim, dtype)
    if max_seqlen_q <= block_q:
        return None
    num_seqs = cu_seqlens_q.numel() - 1
    return _tile_seqs(cu_seqlens_q, num_tokens // block_q + num_seqs, block_q)


def _tile_seqs(cu_seqlens_q, num_q_tiles: int, block_q: int) -> torch.Tensor:
    """tile -> sequence for the flat grid: the last sequence whose first tile
    (cu[s] // block_q + s) is at or before the tile."""
    num_seqs = cu_seqlens_q.numel() - 1
    ids = torch.arange(num_q_tiles, device=cu_seqlens_q.device, dtype=cu_seqlens_q.dtype)
    starts = cu_seqlens_q[:-1] // block_q + ids[:num_seqs]
    return (torch.searchsorted(starts, ids, right=True) - 1).to(torch.int32)


def paged_attention(q, k_cache, v_cache, block_tables, context_lens,
                    cu_seqlens_q, max_seqlen_q, softmax_scale, *,
                    num_splits=None, config=None, max_context_len=None, tile_seqs=None,
                    early_kv_cache=None, merge_counters=None):
    """Triton version of reference.paged_attention (same signature).

    Extra keyword-only knobs: num_splits (None = choose_num_splits; 1 = no
    split), config (AttnConfig, None = default_config) and max_context_len
    (the host-side bound on context_lens those choices use; None =
    block_tables.shape[1] * block_size).  Callers that must get the same
    kernels for differently shaped inputs (CUDA graph vs eager) pass the same
    bounds.  max_seqlen_q must be >= every sequence's query length; it may be
    larger (a padded step).  Output rows past cu_seqlens_q[-1] are left
    unwritten.  tile_seqs: attention_tile_map's result for this step (None:
    made here when the flat grid needs it). early_kv_cache: (k, v) shaped like the cache, where
    the split decode reads the tiles it reads before the PDL wait (default: the cache itself);
    tests pass a copy with this step's tokens made stale, to check that only tokens of earlier
    steps are read there (on the GPU the kernels before may still be writing this step's).
    merge_counters: see rope_and_paged_attention.
    """
    return _attention(q, None, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q,
                      max_seqlen_q, softmax_scale, num_splits=num_splits, config=config,
                      max_context_len=max_context_len, tile_seqs=tile_seqs,
                      early_kv_cache=early_kv_cache, merge_counters=merge_counters)


def rope_and_paged_attention(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping,
                             block_tables, context_lens, cu_seqlens_q, max_seqlen_q, softmax_scale, *,
                             num_splits=None, config=None, max_context_len=None, tile_seqs=None,
                             early_kv_cache=None, merge_counters=None):
    """Triton version of reference.rope_and_paged_attention: rope_and_write_kv, then
    paged_attention over the cache it wrote, for q, k, v as the qkv projection made them.

    A step on the decode grid (every sequence's query one tile) runs it as one launch: each
    program rotates its rows of q, and the program whose KV share holds a new token rotates and
    writes that token's k and v before reading its tiles. Other steps take the two kernels.
    merge_counters: int32 zeros, at least sequences x KV heads, that no other stream uses at the
    same time; with them the last program of a split sequence merges its splits (no merge
    kernel), and leaves them zero again. Without (or too few), the merge kernel runs.
    knobs as paged_attention's.
    """
    knobs = dict(num_splits=num_splits, config=config, max_context_len=max_context_len,
                 tile_seqs=tile_seqs, early_kv_cache=early_kv_cache, merge_counters=merge_counters)
    fusion = _fusion_mode()
    if fusion == "0" or _grid_is_flat(q, k_cache, max_seqlen_q, config):
        q, _ = rope_and_write_kv(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping)
        return _attention(q, None, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q,
                          max_seqlen_q, softmax_scale, **knobs)
    assert q.dim() == 3 and k.shape == v.shape and k.shape[0] == q.shape[0], (q.shape, k.shape, v.shape)
    assert k.shape[1:] == k_cache.shape[2:] and k.stride(2) == 1 and v.stride(2) == 1
    assert cos_sin_cache.shape[-1] == q.shape[2] and cos_sin_cache.stride(1) == 1
    assert positions.is_contiguous() and slot_mapping.is_contiguous()
    assert positions.numel() >= q.shape[0] and slot_mapping.numel() >= q.shape[0]
    rope = (k, v, positions, cos_sin_cache, slot_mapping)
    return _attention(q, rope, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q,
                      max_seqlen_q, softmax_scale, **knobs)


@functools.lru_cache(maxsize=None)
def _fusion_mode() -> str:
    """LLM_FUSED_DECODE_ATTENTION (read once): 1, RoPE and the split merge inside the decode
    attention kernel; rope, RoPE only (the merge kernel runs); unset or 0, neither (the RoPE
    kernel and the merge kernel run, as before the fusion). Off by default: with both inside,
    batch-1 1B decode on an H100 was 1.7% slower (877 vs 892 tok/s; the graph on inert inputs,
    every split empty, 31 us shorter), the one program per KV head that merges all splits after
    the atomic being a longer tail than the merge kernel's program per head
    (perf/results/2026-12-07-h100/batch1_fusions/). RoPE alone is not yet measured."""
    mode = os.environ.get("LLM_FUSED_DECODE_ATTENTION", "0").strip().lower()
    if mode not in ("0", "1", "rope"):
        raise ValueError(f"LLM_FUSED_DECODE_ATTENTION must be 0, 1 or rope, got {mode!r}")
    return mode


def _grid_is_flat(q, k_cache, max_seqlen_q, config) -> bool:
    """Whether a step takes the flat grid (some query longer than one decode tile)."""
    group_pad = triton.next_power_of_2(q.shape[1] // k_cache.shape[2])
    return max_seqlen_q > _block_q(max_seqlen_q, group_pad, q.shape[2], q.dtype, config)


def _attention(q, rope, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q, max_seqlen_q,
               softmax_scale, *, num_splits, config, max_context_len, tile_seqs, early_kv_cache,
               merge_counters):
    """paged_attention; with rope = (k, v, positions, cos_sin_cache, slot_mapping) on the decode
    grid, rope_and_paged_attention's single launch."""
    _check_inputs(q, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q)
    if q.stride(2) != 1:
        q = q.contiguous()
    num_tokens, num_q_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_cache.shape
    num_seqs = context_lens.numel()
    group = num_q_heads // num_kv_heads
    group_pad = triton.next_power_of_2(group)
    out = new_output((num_tokens, num_q_heads, head_dim), q.dtype, q.device)
    if num_tokens == 0 or num_seqs == 0 or max_seqlen_q <= 0:
        return out

    if max_context_len is None:
        max_context_len = block_tables.shape[1] * page_size  # host-side upper bound
    # The query tile (and so the grid kind) does not depend on the split count.
    block_q = _block_q(max_seqlen_q, group_pad, head_dim, q.dtype, config)
    # One query tile per sequence (decode): a (1, heads, seqs) grid needs no
    # search.  Otherwise the flat grid: its size does not depend on how the
    # tokens are spread over sequences, only on their totals.
    flat = max_seqlen_q > block_q
    if num_splits is None:
        if flat:
            num_splits = choose_prefill_splits(num_tokens // block_q + num_seqs, num_kv_heads,
                                               max_context_len, device=q.device)
        else:
            num_splits = choose_num_splits(num_seqs, num_kv_heads, max_context_len,
                                           max_seqlen_q, device=q.device)
    num_splits = max(1, int(num_splits))
    if config is None:
        config = default_config(max_seqlen_q, group_pad, head_dim, q.dtype, num_splits,
                                max_context_len)
    assert max(config.block_m, group_pad) // group_pad == block_q
    num_q_tiles = num_tokens // block_q + num_seqs if flat else 1
    split = num_splits > 1
    if flat:
        if tile_seqs is None:
            tile_seqs = _tile_seqs(cu_seqlens_q, num_q_tiles, block_q)
        assert tile_seqs.numel() == num_q_tiles, "tile_seqs is for another step shape"
    else:
        tile_seqs = cu_seqlens_q   # unused by the kernel

    if rope is not None:
        assert not flat, "RoPE runs inside the attention only on the decode grid"
        k_new, v_new, positions, cos_sin, slots = rope
    else:   # unused by the kernel; any valid pointers will do
        k_new = v_new = q
        positions = slots = cos_sin = context_lens
    # The last split merges (no merge kernel) only on the decode grid, and only with counters
    # for every (sequence, KV head) and the fusion not switched off.
    merge_last = (split and not flat and merge_counters is not None and _fusion_mode() == "1"
                  and merge_counters.numel() >= num_seqs * num_kv_heads)
    if merge_last:
        assert merge_counters.dtype == torch.int32 and merge_counters.is_contiguous()
        assert merge_counters.device == q.device
    counters = merge_counters if merge_last else context_lens
    splits_pad = max(2, triton.next_power_of_2(num_splits))
    if split:
        part_m = new_output((num_splits, num_tokens, num_q_heads), torch.float32, q.device)
        part_l = new_output((num_splits, num_tokens, num_q_heads), torch.float32, q.device)
        part_acc = new_output((num_splits, num_tokens, num_q_heads, head_dim),
                              torch.float32, q.device)
    else:  # unused by the kernel; any valid pointer will do
        part_m = part_l = part_acc = out

    k_early, v_early = early_kv_cache if early_kv_cache is not None else (k_cache, v_cache)
    assert k_early.shape == k_cache.shape and k_early.stride() == k_cache.stride()
    assert v_early.shape == v_cache.shape and v_early.stride() == v_cache.stride()
    pdl = pdl_mode(q.device, signal_at_start=True)   # the next call reads its KV early (pdl.py)

    def launch(grid_flat: bool, cfg: AttnConfig, tile_q: int, short_q: int) -> None:
        grid = (num_q_tiles, num_kv_heads * num_splits, 1) if grid_flat else (1, num_kv_heads * num_splits, num_seqs)
        _paged_attention_kernel[grid](
            q, k_cache, v_cache, k_early, v_early, block_tables, context_lens, cu_seqlens_q, tile_seqs,
            out, part_m, part_l, part_acc, k_new, v_new, positions, cos_sin, slots, counters,
            float(softmax_scale) * _LOG2E, num_splits, num_tokens, num_seqs,
            q.stride(0), q.stride(1), k_new.stride(0), k_new.stride(1), v_new.stride(0),
            v_new.stride(1), cos_sin.stride(0),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            block_tables.stride(0), out.stride(0), out.stride(1),
            NUM_Q_HEADS=num_q_heads, GROUP=group, GROUP_PAD=group_pad,
            HEAD_DIM=head_dim, PAGE_SIZE=page_size,
            BLOCK_Q=tile_q, BLOCK_N=cfg.block_n,
            SPLIT=split, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            FLAT=grid_flat, PDL=pdl, SHORT_Q=short_q, ROPE=rope is not None,
            MERGE_LAST=merge_last and not grid_flat, SPLITS_PAD=splits_pad,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=pdl > 0,
        )

    if flat and num_seqs > 1:
        # A mixed step: sequences of at most one decode tile go to the decode grid. (A step of
        # prompts only pays for one launch whose programs all exit at once.)
        dec_config = default_config(1, group_pad, head_dim, q.dtype, num_splits, max_context_len)
        dec_q = max(dec_config.block_m, group_pad) // group_pad
        launch(True, config, block_q, dec_q)
        launch(False, dec_config, dec_q, 0)
    else:
        launch(flat, config, block_q, 0)
    if split and not merge_last:
        _merge_splits_kernel[(num_tokens, num_q_heads)](
            part_m, part_l, part_acc, out, num_splits, num_tokens,
            out.stride(0), out.stride(1),
            NUM_Q_HEADS=num_q_heads, HEAD_DIM=head_dim,
            SPLITS_PAD=splits_pad, PDL=pdl,
            num_warps=4 if head_dim >= 128 else 2, launch_pdl=pdl > 0,
        )
    return out


def default_softmax_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
