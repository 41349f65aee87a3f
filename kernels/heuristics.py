"""Launch heuristics that need no Triton (importable on any machine).

The split-KV ("flash-decoding") decision lives here so the engine can call it
on the host, once per step, without touching device memory (no sync) — also
while capturing CUDA graphs, where the answer must be fixed per graph.
"""

from __future__ import annotations

import functools

import torch

# Splitting pays off only when the un-split grid leaves SMs idle.  These are
# deliberately simple knobs; tune them with perf/bench_kernels.py.
SPLIT_MAX_QLEN = 16          # only decode-like steps (few query tokens) split
# H100, B=1 x 4096 (GQA 32/8, D=128 bf16, CUDA graph, cold L2): 32 splits of
# 128 tokens 18.8 us, 16 splits 20.4 us, 64 splits 20.0 us.
MIN_TOKENS_PER_SPLIT = 128   # below this a split's fixed cost dominates
MAX_SPLITS = 64              # bounds the partial buffers and the reduce kernel
PROGRAMS_PER_SM = 2          # target grid size, in programs per SM
DEFAULT_NUM_SMS = 132        # H100 SXM; used when no CUDA device is visible


@functools.lru_cache(maxsize=None)
def num_sms(device_index: int | None = None) -> int:
    """Multiprocessor count of a CUDA device (DEFAULT_NUM_SMS without CUDA)."""
    if not torch.cuda.is_available():
        return DEFAULT_NUM_SMS
    idx = torch.cuda.current_device() if device_index is None else device_index
    return torch.cuda.get_device_properties(idx).multi_processor_count


def device_num_sms(device: torch.device | None) -> int:
    """num_sms of a tensor's device: its own count on CUDA, DEFAULT_NUM_SMS elsewhere (the CPU
    interpreter)."""
    return num_sms(device.index if device is not None and device.type == "cuda" else None)


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_context_len: int,
                      max_seqlen_q: int = 1, device=None) -> int:
    """How many programs to split each sequence's KV range across.

    num_seqs: sequences in the step (B); num_kv_heads: KV heads of one layer
    (one program handles a whole GQA group); max_context_len: an upper bound
    on context_lens (block_tables.shape[1] * block_size works, the true
    maximum is better); max_seqlen_q: longest query of the step.
    Returns 1 (no split) when the plain grid already fills the GPU, when any
    sequence has many query tokens (prefill parallelises over query tiles) or
    when contexts are short; otherwise enough splits to give every SM about
    PROGRAMS_PER_SM programs, each with >= MIN_TOKENS_PER_SPLIT tokens.
    """
    if max_seqlen_q > SPLIT_MAX_QLEN or max_context_len < 2 * MIN_TOKENS_PER_SPLIT:
        return 1
    sms = DEFAULT_NUM_SMS
    if device is not None and torch.device(device).type == "cuda":
        sms = num_sms(torch.device(device).index)
    programs = max(1, num_seqs * num_kv_heads)
    if programs >= sms:
        return 1
    wanted = -(-PROGRAMS_PER_SM * sms // programs)
    return max(1, min(wanted, max_context_len // MIN_TOKENS_PER_SPLIT, MAX_SPLITS))


# Steps on the flat grid (several query tiles per sequence, e.g. a prefill chunk after a long
# cached context) can leave SMs idle too: one sequence's 256-token chunk on the 1B shape (GQA 32/8,
# 32-token tiles) is 8 tiles x 8 heads. Splitting multiplies every program, the many that exit at
# once included, so it is only worth it when the whole grid is small.
PREFILL_MIN_TOKENS_PER_SPLIT = 512
PREFILL_MAX_SPLITS = 8


def choose_prefill_splits(num_q_tiles: int, num_kv_heads: int, max_context_len: int,
                          device=None) -> int:
    """Splits for a step on the flat tile grid (see attention.py).

    num_q_tiles: the flat grid's tiles (tokens // BLOCK_Q + sequences); max_context_len: bound
    on context_lens.
    Returns 1 when the tiles already give every SM a program, or contexts are short.
    """
    sms = DEFAULT_NUM_SMS
    if device is not None and torch.device(device).type == "cuda":
        sms = num_sms(torch.device(device).index)
    programs = max(1, num_q_tiles * num_kv_heads)
    if programs >= sms or max_context_len < 2 * PREFILL_MIN_TOKENS_PER_SPLIT:
        return 1
    wanted = -(-PROGRAMS_PER_SM * sms // programs)
    return max(1, min(wanted, max_context_len // PREFILL_MIN_TOKENS_PER_SPLIT, PREFILL_MAX_SPLITS))
