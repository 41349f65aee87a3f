"""The attention half of a decoder layer for one decode token, as one persistent kernel.

At batch 1 a layer's attention half is six small kernels (RMSNorm, qkv projection, RoPE + K/V
write, split attention, merge, o projection). Each boundary costs a launch ramp and a tail, and
only the two projections read weights, so HBM idles through most of it: 21 MB of a 1B model's
qkv and o weights took ~22 us a layer on an H100, against 7 us of bandwidth (perf/results/
2026-11-24-h100/bs1_step_interior/).

Here one program per SM runs the four phases back to back, separated by grid-wide barriers:

  0. every program adds the residual and normalises the token itself (8 KB read from L2), then
     multiplies it with its slice of the qkv weight, which it requested before anything else;
  1. (kv head, split) programs rotate q and the new k, write the new K/V into the paged cache and
     attend over their share of the context (flash-decoding partials; the first KV tile was
     requested at the start too);
  2. one program per query head merges the splits;
  3. every program multiplies the attention output with its slice of the o weight, which it
     requested at the end of phase 1, so those bytes stream during the barriers and the merge.

A grid barrier needs every program resident at once: the grid is one program per SM, and a
program of NUM_WARPS warps may use at most an SM's registers (Triton refuses the launch
otherwise, so it can never be half resident). Under TRITON_INTERPRET (programs run one after
another, so a barrier would never open) and in the tests that compare the two, the phases run as
four launches instead (`fused=False`), with the same code. The barrier counter is one per device:
two streams must not run blocks at the same time, and the grid assumes the process sees all SMs
(under MPS with an SM limit the programs could never all be resident).

Status: opt-in (LLM_DECODE_BLOCK=1), because on an H100 it is still slower than the six kernels:
batch-1 1B 828.7 vs 881.8 tok/s. Per-program timestamps put the attention phase at 6-12 us and
show that a program, holding a whole SM's registers, cannot start under the kernel before it
(perf/results/2026-12-07-h100/decode_block/).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from ._alloc import new_output
from .attention import merge_split_partials
from .heuristics import device_num_sms
from .pdl import pdl_mode

__all__ = ["decode_attention_block", "decode_block_fits", "DecodeBlockPlan"]

_LOG2E = 1.4426950408889634
# Registers are what one program per SM may hold of the two weight slices (the compiler needs the
# rest): 16 warps x 32 threads x 128 registers is an SM's 64K registers.
NUM_WARPS = 16
SLICE_BYTES = 128 * 1024
BLOCK_T = 32   # KV positions per attention tile


@triton.jit
def _grid_barrier(bar_ptr, target):
    """Every program of the grid arrives before any leaves; writes made before are visible after.

    bar_ptr is a counter of arrivals that no launch resets: a launch reads it at its start (when
    every earlier launch has finished, so it is a multiple of the grid size), and its k-th barrier
    opens when the count reaches start + k * grid size."""
    tl.debug_barrier()   # every thread's stores are issued before thread 0 arrives (release)
    # Thread 0 adds its arrival and polls the counter; the other threads wait at the CTA barrier
    # below (one poll per program, not per thread: 132 x 512 polling threads made the barriers
    # several times slower). `${:uid}` makes each inlined copy's labels unique.
    tl.inline_asm_elementwise(
        "{ .reg .pred p0, p1; .reg .u32 t; .reg .u64 v; mov.u32 t, %tid.x; setp.ne.u32 p0, t, 0; "
        "@p0 bra DONE${:uid}; red.release.gpu.global.add.u64 [$1], 1; SPIN${:uid}: "
        "ld.acquire.gpu.global.u64 v, [$1]; setp.lt.u64 p1, v, $2; @p1 bra SPIN${:uid}; "
        "DONE${:uid}: mov.u32 $0, 0; }",
        "=r,l,l", [bar_ptr, target], dtype=tl.int32, is_pure=False, pack=1)
    tl.debug_barrier()   # every thread waits for thread 0's acquire


@triton.jit
def _load_rows(w_ptr, first_row, n_rows, n_total, K, ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """Rows [first_row, first_row + n_rows) of a row-major [n_total, K] weight, as [ROWS, BLOCK_K]."""
    r = tl.arange(0, ROWS)
    k = tl.arange(0, BLOCK_K)
    rows = first_row + r
    ok = (r < n_rows) & (rows < n_total)
    return tl.load(w_ptr + rows[:, None].to(tl.int64) * K + k[None, :], mask=ok[:, None] & (k[None, :] < K),
                   other=0.0)


@triton.jit
def _store_row_products(w, x, out_ptr, first_row, n_rows, n_total, ROWS: tl.constexpr):
    """out[first_row + r] = w[r] . x (fp32 products and sum, rounded to out's dtype)."""
    r = tl.arange(0, ROWS)
    acc = tl.sum(w.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)
    rows = first_row + r
    tl.store(out_ptr + rows, acc.to(out_ptr.dtype.element_ty), mask=(r < n_rows) & (rows < n_total))


@triton.jit
def _rotate(x_ptr, heads, head_ok, cos, sin, sign, HEAD_DIM: tl.constexpr):
    """RoPE (rotate-half) of heads [R] of a flat [*, HEAD_DIM] row -> [R, HEAD_DIM] in fp32,
    rounded through x's dtype like the reference."""
    d = tl.arange(0, HEAD_DIM)
    partner = (d + HEAD_DIM // 2) % HEAD_DIM
    base = x_ptr + heads[:, None] * HEAD_DIM
    x = tl.load(base + d[None, :], mask=head_ok[:, None], other=0.0, cache_modifier=".cg")
    xp = tl.load(base + partner[None, :], mask=head_ok[:, None], other=0.0, cache_modifier=".cg")
    rot = x.to(tl.float32) * cos[None, :] + sign[None, :] * xp.to(tl.float32) * sin[None, :]
    return rot.to(x.dtype)


@triton.jit
def _load_kv_tile(k_cache_ptr, v_cache_ptr, bt_ptr, kv_head, start, hi,
                  stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                  HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr, BLOCK_T: tl.constexpr):
    """K and V of positions [start, start + BLOCK_T) (< hi) of one KV head, [BLOCK_T, HEAD_DIM]."""
    t = start + tl.arange(0, BLOCK_T)
    t_ok = t < hi
    d = tl.arange(0, HEAD_DIM)
    blk = tl.load(bt_ptr + t // PAGE_SIZE, mask=t_ok, other=0).to(tl.int64)
    off = t % PAGE_SIZE
    k = tl.load(k_cache_ptr + blk[:, None] * stride_kb + off[:, None] * stride_ks + kv_head * stride_kh
                + d[None, :], mask=t_ok[:, None], other=0.0)
    v = tl.load(v_cache_ptr + blk[:, None] * stride_vb + off[:, None] * stride_vs + kv_head * stride_vh
                + d[None, :], mask=t_ok[:, None], other=0.0)
    return k, v


@triton.jit
def _attend_tile(qf, k, v, start, hi, pos, k_new, v_new, m_i, l_i, acc, qk_scale, BLOCK_T: tl.constexpr):
    """Online-softmax update of a [GROUP_PAD] group of query heads with one KV tile; the row of
    position `pos` takes the new token's k_new / v_new instead of what the cache held."""
    t = start + tl.arange(0, BLOCK_T)
    is_new = (t == pos)[:, None]
    k = tl.where(is_new, k_new.to(k.dtype), k).to(tl.float32)
    v = tl.where(is_new, v_new.to(v.dtype), v).to(tl.float32)
    s = tl.sum(qf[:, None, :] * k[None, :, :], axis=2) * qk_scale   # [GROUP_PAD, BLOCK_T]
    s = tl.where((t < hi)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_ref = tl.where(m_new > float("-inf"), m_new, 0.0)   # an empty tile so far: no -inf - -inf
    alpha = tl.math.exp2(m_i - m_ref)
    p = tl.math.exp2(s - m_ref[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
    return m_new, l_i, acc


@triton.jit
def _decode_block_kernel(
    h_ptr, res_ptr, norm_w_ptr, qkv_w_ptr, o_w_ptr, cos_sin_ptr, pos_ptr, slot_ptr, bt_ptr, ctx_ptr,
    k_cache_ptr, v_cache_ptr, res_out_ptr, qkv_ptr, part_m_ptr, part_l_ptr, part_acc_ptr, attn_ptr,
    out_ptr, bar_ptr,
    eps, qk_scale, num_splits, qkv_rows, o_rows,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    HIDDEN: tl.constexpr, BLOCK_H: tl.constexpr, QKV_BLOCK: tl.constexpr, O_BLOCK: tl.constexpr,
    NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr, BLOCK_T: tl.constexpr, SPLITS_PAD: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, FIRST: tl.constexpr, LAST: tl.constexpr, PDL: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    GROUP: tl.constexpr = NUM_Q_HEADS // NUM_KV_HEADS
    Q_SIZE: tl.constexpr = NUM_Q_HEADS * HEAD_DIM
    QKV_N: tl.constexpr = (NUM_Q_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM
    BLOCK_O: tl.constexpr = Q_SIZE   # o's input width (a power of two: heads * head_dim)
    ATTEND: tl.constexpr = FIRST <= 1 and LAST >= 1
    FUSED: tl.constexpr = FIRST < LAST
    cols = tl.arange(0, BLOCK_H)
    hmask = cols < HIDDEN
    d = tl.arange(0, HEAD_DIM)

    # Before the PDL wait: only what no kernel of this step writes. The weights; the step's index
    # inputs and the KV of earlier steps' tokens (pdl.py); the barrier counter, which only this
    # kernel touches and whose previous launch finished before the kernels between them began.
    if FUSED:
        bar_base = (tl.load(bar_ptr, volatile=True) // nprog) * nprog
    if FIRST == 0:
        w_qkv = _load_rows(qkv_w_ptr, pid * qkv_rows, qkv_rows, QKV_N, HIDDEN, QKV_BLOCK, BLOCK_H)
        norm_w = tl.load(norm_w_ptr + cols, mask=hmask, other=0.0)
    if ATTEND:
        # Programs [0, NUM_KV_HEADS * num_splits) attend, one (kv head, split) each; the others
        # get an empty range. Their first KV tile is requested now: the new token's row, stale
        # in the cache until phase 1 writes it, is replaced from registers there.
        attends = pid < NUM_KV_HEADS * num_splits
        kv_head = pid // num_splits
        split = pid % num_splits
        pos = tl.load(pos_ptr).to(tl.int32)
        ctx = tl.load(ctx_ptr)
        tiles_per_split = tl.cdiv(tl.cdiv(ctx, BLOCK_T), num_splits)
        lo = split * tiles_per_split * BLOCK_T
        hi = tl.where(attends, tl.minimum(lo + tiles_per_split * BLOCK_T, ctx), lo)
        half_d = d % (HEAD_DIM // 2)
        cos = tl.load(cos_sin_ptr + pos * HEAD_DIM + half_d)
        sin = tl.load(cos_sin_ptr + pos * HEAD_DIM + HEAD_DIM // 2 + half_d)
        k0, v0 = _load_kv_tile(k_cache_ptr, v_cache_ptr, bt_ptr, kv_head, lo, hi,
                               stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                               HEAD_DIM, PAGE_SIZE, BLOCK_T)
    if PDL != 0:
        gdc_wait()

    # ---- phase 0: residual add + RMSNorm (every program, redundantly) and the qkv rows --------
    if FIRST == 0:
        x = tl.load(h_ptr + cols, mask=hmask, other=0.0)
        if HAS_RESIDUAL:
            x = x + tl.load(res_ptr + cols, mask=hmask, other=0.0)
            if pid == 0:
                tl.store(res_out_ptr + cols, x, mask=hmask)
        xf = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / HIDDEN + eps)
        xn = (xf * rstd).to(x.dtype) * norm_w.to(x.dtype)   # rounded as HF's RMSNorm
        _store_row_products(w_qkv, xn, qkv_ptr, pid * qkv_rows, qkv_rows, QKV_N, QKV_BLOCK)
    if FIRST == 0 and FUSED:
        _grid_barrier(bar_ptr, bar_base + nprog)

    # ---- phase 1: RoPE, K/V write and split attention -----------------------------------------
    if ATTEND:
        if attends:
            sign = tl.where(d < HEAD_DIM // 2, -1.0, 1.0)
            g = tl.arange(0, GROUP_PAD)
            q = _rotate(qkv_ptr, kv_head * GROUP + g, g < GROUP, cos, sin, sign, HEAD_DIM)
            one = tl.arange(0, 1)
            k_new = _rotate(qkv_ptr + Q_SIZE, kv_head + one, one < 1, cos, sin, sign, HEAD_DIM)
            v_new = tl.load(qkv_ptr + Q_SIZE + (NUM_KV_HEADS + kv_head) * HEAD_DIM + d[None, :],
                            cache_modifier=".cg")
            if (lo <= pos) & (pos < hi):
                # This program's share holds the new token: it writes it for later steps and
                # uses the values it has (the cache is not read back within this launch).
                slot = tl.load(slot_ptr)
                if slot >= 0:
                    blk = slot // PAGE_SIZE
                    off = slot % PAGE_SIZE
                    tl.store(k_cache_ptr + blk * stride_kb + off * stride_ks + kv_head * stride_kh + d[None, :],
                             k_new.to(k_cache_ptr.dtype.element_ty))
                    tl.store(v_cache_ptr + blk * stride_vb + off * stride_vs + kv_head * stride_vh + d[None, :],
                             v_new.to(v_cache_ptr.dtype.element_ty))
            qf = q.to(tl.float32)
            m_i = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
            l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
            acc = tl.zeros([GROUP_PAD, HEAD_DIM], dtype=tl.float32)
            m_i, l_i, acc = _attend_tile(qf, k0, v0, lo, hi, pos, k_new, v_new, m_i, l_i, acc,
                                         qk_scale, BLOCK_T)
            for start in range(lo + BLOCK_T, hi, BLOCK_T):
                k, v = _load_kv_tile(k_cache_ptr, v_cache_ptr, bt_ptr, kv_head, start, hi,
                                     stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                                     HEAD_DIM, PAGE_SIZE, BLOCK_T)
                m_i, l_i, acc = _attend_tile(qf, k, v, start, hi, pos, k_new, v_new, m_i, l_i, acc,
                                             qk_scale, BLOCK_T)
            # Partials [num_splits, NUM_Q_HEADS(, HEAD_DIM)] fp32; an empty split leaves m = -inf.
            row = split * NUM_Q_HEADS + kv_head * GROUP + g
            tl.store(part_m_ptr + row, m_i, mask=g < GROUP)
            tl.store(part_l_ptr + row, l_i, mask=g < GROUP)
            tl.store(part_acc_ptr + row[:, None] * HEAD_DIM + d[None, :], acc, mask=(g < GROUP)[:, None])
    if LAST >= 3:
        # The o slice streams in while the barriers and the merge run. Requested after the
        # attention: in flight earlier, it delayed that program's own reads and barrier polls.
        w_o = _load_rows(o_w_ptr, pid * o_rows, o_rows, HIDDEN, BLOCK_O, O_BLOCK, BLOCK_O)
    if FIRST <= 1 and LAST >= 2:
        _grid_barrier(bar_ptr, bar_base + (2 - FIRST) * nprog)

    # ---- phase 2: merge the splits, one query head per program --------------------------------
    # The last programs merge: without attention work, their o slices were requested first.
    if FIRST <= 2 and LAST >= 2:
        head = pid - (nprog - NUM_Q_HEADS)
        if head >= 0:
            s_idx = tl.arange(0, SPLITS_PAD)
            o = merge_split_partials(part_m_ptr, part_l_ptr, part_acc_ptr, s_idx * NUM_Q_HEADS + head,
                                     s_idx < num_splits, HEAD_DIM)
            tl.store(attn_ptr + head * HEAD_DIM + d, o.to(attn_ptr.dtype.element_ty))
    if FIRST <= 2 and LAST >= 3:
        _grid_barrier(bar_ptr, bar_base + (3 - FIRST) * nprog)

    # ---- phase 3: the o projection -------------------------------------------------------------
    if LAST >= 3:
        a = tl.load(attn_ptr + tl.arange(0, BLOCK_O), cache_modifier=".cg")
        _store_row_products(w_o, a, out_ptr, pid * o_rows, o_rows, HIDDEN, O_BLOCK)
    # The next kernel may launch only now, not after the wait as pdl.py's kernels let theirs: a
    # block launched right after this one (back-to-back calls in a benchmark) would otherwise read
    # the barrier counter while this one's barriers still count on it.
    if PDL != 0:
        gdc_launch_dependents()


class DecodeBlockPlan:
    """How the work of one layer's attention half is spread over the grid, for one weight shape."""

    def __init__(self, hidden: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                 itemsize: int, programs: int):
        self.programs = programs
        self.hidden, self.num_q_heads, self.num_kv_heads, self.head_dim = hidden, num_q_heads, num_kv_heads, head_dim
        self.qkv_n = (num_q_heads + 2 * num_kv_heads) * head_dim
        self.q_size = num_q_heads * head_dim
        self.block_h = triton.next_power_of_2(hidden)
        self.qkv_rows = triton.cdiv(self.qkv_n, programs)
        self.o_rows = triton.cdiv(hidden, programs)
        self.qkv_block = triton.next_power_of_2(self.qkv_rows)
        self.o_block = triton.next_power_of_2(self.o_rows)
        self.slice_bytes = max(self.qkv_block * self.block_h, self.o_block * self.q_size) * itemsize

    @property
    def fits(self) -> bool:
        """Whether each program can hold its weight slices and the grid covers every phase."""
        q = self.q_size
        return (self.slice_bytes <= SLICE_BYTES and q == triton.next_power_of_2(q)
                and self.num_q_heads % self.num_kv_heads == 0
                and self.programs >= max(self.num_q_heads, self.num_kv_heads))

    def num_splits(self, max_context_len: int) -> int:
        """Split-KV count: a tile or more per split, one program per (kv head, split), and those
        programs apart from the last NUM_Q_HEADS ones, which merge (where the grid allows)."""
        spare = max(self.programs - self.num_q_heads, self.num_kv_heads) // self.num_kv_heads
        return max(1, min(spare, triton.cdiv(max(1, max_context_len), BLOCK_T)))


@functools.lru_cache(maxsize=None)
def _plan(hidden, num_q_heads, num_kv_heads, head_dim, itemsize, programs) -> DecodeBlockPlan:
    return DecodeBlockPlan(hidden, num_q_heads, num_kv_heads, head_dim, itemsize, programs)


def _programs(device: torch.device) -> int:
    """Grid size: one program per SM."""
    return device_num_sms(device)


def decode_block_fits(hidden: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                      dtype: torch.dtype, device: torch.device) -> bool:
    """Whether `decode_attention_block` takes this model on this device. Opt-in (LLM_DECODE_BLOCK=1):
    on an H100 it is still slower than the kernels it replaces (see the module doc)."""
    if os.environ.get("LLM_DECODE_BLOCK", "0") != "1":
        return False
    itemsize = torch.empty((), dtype=dtype).element_size()
    return _plan(hidden, num_q_heads, num_kv_heads, head_dim, itemsize, _programs(device)).fits


_barriers: dict[tuple[str, int | None], torch.Tensor] = {}


def _barrier_state(device: torch.device) -> torch.Tensor:
    """The grid barriers' arrival counter of a device (int64: it never wraps), made once."""
    key = (device.type, device.index)
    if key not in _barriers:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("decode_attention_block: run it once eagerly before CUDA graph capture "
                               "(its barrier state must not live in the graph's memory pool)")
        _barriers[key] = torch.zeros(1, dtype=torch.int64, device=device)
    return _barriers[key]


def decode_attention_block(h, residual, norm_w, qkv_w, o_w, eps, positions, cos_sin_cache,
                           k_cache, v_cache, slot_mapping, block_tables, context_lens, softmax_scale,
                           *, max_context_len=None, fused=None, num_splits=None):
    """The attention half of a layer for one sequence's one decode token (see the module doc).

    h [1, hidden]: the previous layer's output (or the embedding); residual [1, hidden] or None
    (first layer). Weights: norm_w [hidden], qkv_w [(Hq + 2 Hkv) D, hidden] (q, k, v stacked),
    o_w [hidden, Hq D]. The rest as reference.rope_and_write_kv / paged_attention, for one
    sequence. Returns (o projection [1, hidden], residual_out = h + residual, or h).
    fused: one launch with grid barriers (default on CUDA) or one launch per phase.
    """
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    hidden = h.shape[-1]
    num_q_heads = o_w.shape[1] // head_dim
    assert h.shape == (1, hidden) and (residual is None or residual.shape == h.shape)
    assert block_tables.shape[0] == 1 and context_lens.shape == (1,) and positions.shape == (1,)
    assert qkv_w.shape == ((num_q_heads + 2 * num_kv_heads) * head_dim, hidden) and o_w.shape[0] == hidden
    assert norm_w.shape == (hidden,) and cos_sin_cache.shape[-1] == head_dim and v_cache.shape == k_cache.shape
    for t in (h, residual if residual is not None else h, norm_w, qkv_w, o_w, cos_sin_cache):
        assert t.is_contiguous()
    assert block_tables.stride(1) == 1
    assert k_cache.stride(3) == 1 and v_cache.stride(3) == 1
    device = h.device
    plan = _plan(hidden, num_q_heads, num_kv_heads, head_dim, h.element_size(), _programs(device))
    assert plan.fits, "decode_attention_block: this shape does not fit (check decode_block_fits first)"
    if fused is None:
        fused = device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1"
    if num_splits is None:
        num_splits = plan.num_splits(max_context_len if max_context_len is not None
                                     else block_tables.shape[1] * k_cache.shape[1])
    num_splits = max(1, min(int(num_splits), plan.programs // num_kv_heads))

    out = new_output((1, hidden), h.dtype, device)
    residual_out = new_output((1, hidden), h.dtype, device) if residual is not None else h
    qkv = new_output((plan.qkv_n,), h.dtype, device)
    attn = new_output((plan.q_size,), h.dtype, device)
    part_m = new_output((num_splits, num_q_heads), torch.float32, device)
    part_l = new_output((num_splits, num_q_heads), torch.float32, device)
    part_acc = new_output((num_splits, num_q_heads, head_dim), torch.float32, device)
    barrier = _barrier_state(device) if fused else part_m   # unused when the phases run apart
    pdl = pdl_mode(device)

    def launch(first: int, last: int) -> None:
        _decode_block_kernel[(plan.programs,)](
            h, residual if residual is not None else h, norm_w, qkv_w, o_w, cos_sin_cache,
            positions, slot_mapping, block_tables, context_lens, k_cache, v_cache,
            residual_out, qkv, part_m, part_l, part_acc, attn, out, barrier,
            float(eps), float(softmax_scale) * _LOG2E, num_splits, plan.qkv_rows, plan.o_rows,
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            HIDDEN=hidden, BLOCK_H=plan.block_h, QKV_BLOCK=plan.qkv_block, O_BLOCK=plan.o_block,
            NUM_Q_HEADS=num_q_heads, NUM_KV_HEADS=num_kv_heads,
            GROUP_PAD=triton.next_power_of_2(num_q_heads // num_kv_heads), HEAD_DIM=head_dim,
            PAGE_SIZE=k_cache.shape[1], BLOCK_T=BLOCK_T,
            SPLITS_PAD=max(2, triton.next_power_of_2(num_splits)),
            HAS_RESIDUAL=residual is not None, FIRST=first, LAST=last,
            PDL=pdl, launch_pdl=pdl > 0, num_warps=NUM_WARPS)

    if fused:
        launch(0, 3)
    else:
        for phase in range(4):
            launch(phase, phase)
    return out, residual_out
