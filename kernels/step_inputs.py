"""A step's index inputs made ready on the device in one kernel, inside the step's CUDA graph.

A step's inputs reach the device as one int64 copy (engine/step_shapes.py). Before the model can
run, three things remain: the tokens of sequences whose last token was sampled by the previous
step and never went through the host (asynchronous scheduling) are read from that step's output,
the per-sequence arrays the attention takes as int32 are cast, and the block tables are copied
into the graphs' int32 table at their full width. Done as torch ops that was five launches per
step between graphs (index_select, index_copy_, the table copy and two casts), each a few us of
serial GPU time at batch 1 (perf/results/2026-11-24-h100/bs1_host_profile_62c539a/). The table's
width changes from step to step, so it is read from the device too, and one graph serves them all.

prepare_step_inputs(input_ids [T] int64 (filled in place), cu_seqlens [S+1] int64, context_lens [S]
int64, fill_src [S] int64 (row of `feedback` holding sequence s's token, or -1), feedback int64,
table_width [1] int64, tables_in (int64, S x width row-major), tables_out int32 [S, >= width],
context_lens_out int32 [S], cu_seqlens_out int32 [S+1]): a sequence with fill_src >= 0 has one
query token, at input_ids[cu_seqlens[s]].

Launched without PDL, so it completes before any later kernel of the step starts: the attention
and RoPE kernels read the tables, context lengths and positions before their PDL wait (pdl.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .heuristics import device_num_sms

__all__ = ["prepare_step_inputs"]

_BLOCK = 1024


# Nothing specialized: eager steps pass views at varying offsets and widths, and a specialization
# would compile a new variant in the middle of serving.
@triton.jit(do_not_specialize=["ids_ptr", "cu_ptr", "ctx_ptr", "fill_ptr", "feedback_ptr", "width_ptr", "tin_ptr",
                               "tout_ptr", "ctx_out_ptr", "cu_out_ptr", "S", "stride_tout"])
def _prepare_step_inputs_kernel(ids_ptr, cu_ptr, ctx_ptr, fill_ptr, feedback_ptr, width_ptr, tin_ptr,
                                tout_ptr, ctx_out_ptr, cu_out_ptr, S, stride_tout,
                                BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    step = tl.num_programs(0) * BLOCK
    offs = tl.arange(0, BLOCK)
    for s0 in range(pid * BLOCK, S + 1, step):
        s = s0 + offs
        cu = tl.load(cu_ptr + s, mask=s <= S, other=0)
        tl.store(cu_out_ptr + s, cu.to(tl.int32), mask=s <= S)
        seq = s < S
        tl.store(ctx_out_ptr + s, tl.load(ctx_ptr + s, mask=seq, other=0).to(tl.int32), mask=seq)
        src = tl.load(fill_ptr + s, mask=seq, other=-1)
        fill = seq & (src >= 0)
        tl.store(ids_ptr + cu, tl.load(feedback_ptr + src, mask=fill, other=0), mask=fill)
    width = tl.load(width_ptr)
    total = S * width
    for e0 in range(pid * BLOCK, total, step):
        e = e0 + offs
        ok = e < total
        row = e // width
        col = e - row * width
        v = tl.load(tin_ptr + e, mask=ok, other=0)
        tl.store(tout_ptr + row.to(tl.int64) * stride_tout + col, v.to(tl.int32), mask=ok)


def prepare_step_inputs(input_ids, cu_seqlens, context_lens, fill_src, feedback, table_width, tables_in,
                        tables_out, context_lens_out, cu_seqlens_out) -> None:
    """Triton version of reference.prepare_step_inputs (see the module docstring)."""
    S = context_lens.shape[0]
    assert cu_seqlens.shape[0] == S + 1 and fill_src.shape[0] == S and tables_out.shape[0] >= S
    assert tables_out.dtype == torch.int32 and tables_out.stride(1) == 1
    assert context_lens_out.dtype == cu_seqlens_out.dtype == torch.int32
    for t in (input_ids, cu_seqlens, context_lens, fill_src, feedback, table_width, tables_in):
        assert t.dtype == torch.int64 and t.is_contiguous(), (t.dtype, t.stride())
    # Enough programs for the widest table the buffer holds: the width is known on the device only.
    cap = max(1, S * tables_out.shape[1])
    grid = max(1, min(triton.cdiv(cap, _BLOCK), 2 * device_num_sms(input_ids.device)))
    _prepare_step_inputs_kernel[(grid,)](input_ids, cu_seqlens, context_lens, fill_src, feedback, table_width,
                                         tables_in, tables_out, context_lens_out, cu_seqlens_out, S,
                                         tables_out.stride(0), BLOCK=_BLOCK, num_warps=4)
