"""Greedy token and log-normalizer of each row of the logits, in one pass over the vocabulary.

argmax_logsumexp(logits [S, V]) -> (argmax [S] int64, logsumexp [S] fp32). The sampler needs both
for every row (the greedy token, and the normalizer of the returned log-probabilities). torch does
them as separate reductions after casting the logits to fp32, and reduces a row of a 128k
vocabulary in one thread block: at batch 1 that took ~80 us of a 1.3 ms decode step on the H100.
Here the vocabulary is cut into chunks so the programs fill the GPU; each chunk keeps a running
max, the first index reaching it and the sum of exp(x - max) (the online-softmax rescaling), and a
second kernel combines a row's chunks in order. Ties go to the lowest index, as in torch.argmax.

For an all-greedy batch the sampler also passes `greedy_out`, float64 [2S]: every row's token, then
its log-probability (max - logsumexp), which is all it copies to the host. A greedy step then
launches these two kernels and the copy, where gather, subtract, two casts and a concatenation
used to add five small kernels and their launches (perf/diag_step_gaps.py shows the step's work
outside its CUDA graph).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .heuristics import device_num_sms

__all__ = ["argmax_logsumexp"]

_BLOCK = 1024
_MAX_CHUNKS = 256    # the combine kernel's width: one compiled variant for every batch size


# Integer arguments that change with the batch size are not specialized on (Triton would compile
# a variant for a value of 1 or a multiple of 16 in the middle of serving).
@triton.jit(do_not_specialize=["chunk_len", "num_chunks"])
def _chunk_kernel(x_ptr, part_m_ptr, part_s_ptr, part_i_ptr, V, stride_x, chunk_len, num_chunks,
                  BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    start = chunk * chunk_len
    end = tl.minimum(start + chunk_len, V)
    m = float("-inf")
    s = 0.0
    best = start
    for k0 in range(start, end, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * stride_x + offs, mask=offs < end, other=float("-inf")).to(tl.float32)
        bm = tl.max(x, 0)
        bi = tl.argmax(x, 0, tie_break_left=True) + k0
        new_m = tl.maximum(m, bm)
        # A block of -inf only (a blocked token range) adds nothing and must not make NaNs.
        alpha = tl.where(new_m == float("-inf"), 0.0, tl.exp(m - new_m))
        e = tl.where(x == float("-inf"), 0.0, tl.exp(x - new_m))
        s = s * alpha + tl.sum(e, 0)
        best = tl.where(bm > m, bi, best)   # strictly greater: an earlier equal max stays
        m = new_m
    idx = row * num_chunks + chunk
    tl.store(part_m_ptr + idx, m)
    tl.store(part_s_ptr + idx, s)
    tl.store(part_i_ptr + idx, best)


@triton.jit(do_not_specialize=["num_chunks", "rows"])
def _combine_kernel(part_m_ptr, part_s_ptr, part_i_ptr, ids_ptr, lse_ptr, greedy_ptr, host_addr_ptr, num_chunks,
                    rows, CHUNKS_PAD: tl.constexpr, GREEDY_OUT: tl.constexpr, HOST_OUT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, CHUNKS_PAD)
    ok = c < num_chunks
    m = tl.load(part_m_ptr + row * num_chunks + c, mask=ok, other=float("-inf"))
    s = tl.load(part_s_ptr + row * num_chunks + c, mask=ok, other=0.0)
    i = tl.load(part_i_ptr + row * num_chunks + c, mask=ok, other=2**31 - 1)
    top = tl.max(m, 0)
    # Chunks are in vocabulary order, so the lowest index among the chunks reaching the max wins.
    best = tl.min(tl.where(ok & (m == top), i, 2**31 - 1), 0)
    w = tl.where(m == float("-inf"), 0.0, tl.exp(m - top))
    lse = top + tl.log(tl.sum(s * w, 0))
    tl.store(ids_ptr + row, best.to(tl.int64))
    tl.store(lse_ptr + row, lse)
    if GREEDY_OUT:   # the greedy token's logit is the row's max
        tl.store(greedy_ptr + row, best.to(tl.float64))
        tl.store(greedy_ptr + rows + row, (top - lse).to(tl.float64))
        if HOST_OUT:
            # The same two values straight into host memory (pinned, mapped: a kernel may write it),
            # at an address the step's inputs carry; 0 means none this step.
            addr = tl.load(host_addr_ptr)
            if addr != 0:
                host = addr.to(tl.pointer_type(tl.float64))
                tl.store(host + row, best.to(tl.float64))
                tl.store(host + rows + row, (top - lse).to(tl.float64))


def argmax_logsumexp(logits: torch.Tensor, greedy_out: torch.Tensor | None = None,
                     ids_out: torch.Tensor | None = None, host_addr: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of reference.argmax_logsumexp: (argmax int64 [S], logsumexp fp32 [S]);
    greedy_out (float64 [2S]) also gets [argmax..., max - logsumexp...]; ids_out (int64 [S]):
    where the argmax goes. host_addr (int64 [1] on the device, needs greedy_out): the address of
    pinned host memory, float64 [2S], that gets greedy_out's values too (0: none), so that a CUDA
    graph can hand its results to the host without a copy of its own after it."""
    assert logits.dim() == 2
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    rows, vocab = logits.shape
    ids = torch.empty(rows, dtype=torch.int64, device=logits.device) if ids_out is None else ids_out
    assert ids.shape == (rows,) and ids.dtype == torch.int64 and ids.is_contiguous()
    lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows == 0:
        return ids, lse
    # About two programs per SM, each chunk at least one block.
    sms = device_num_sms(logits.device)
    chunks = max(1, min(triton.cdiv(2 * sms, rows), triton.cdiv(vocab, _BLOCK), _MAX_CHUNKS))
    chunk_len = triton.cdiv(triton.cdiv(vocab, chunks), _BLOCK) * _BLOCK
    chunks = triton.cdiv(vocab, chunk_len)
    part_m = torch.empty((rows, chunks), dtype=torch.float32, device=logits.device)
    part_s = torch.empty_like(part_m)
    part_i = torch.empty((rows, chunks), dtype=torch.int32, device=logits.device)
    _chunk_kernel[(rows, chunks)](logits, part_m, part_s, part_i, vocab, logits.stride(0), chunk_len,
                                  chunks, BLOCK=_BLOCK, num_warps=4)
    if greedy_out is not None:
        assert greedy_out.dtype == torch.float64 and greedy_out.shape == (2 * rows,) and greedy_out.is_contiguous()
    if host_addr is not None:
        assert greedy_out is not None and host_addr.dtype == torch.int64 and host_addr.numel() == 1
    _combine_kernel[(rows,)](part_m, part_s, part_i, ids, lse, ids if greedy_out is None else greedy_out,
                             ids if host_addr is None else host_addr, chunks, rows, CHUNKS_PAD=_MAX_CHUNKS,
                             GREEDY_OUT=greedy_out is not None, HOST_OUT=host_addr is not None, num_warps=1)
    return ids, lse
