"""The shapes a GPU step is padded to, and the flat layout its inputs travel in.

A CUDA graph replays fixed shapes, so every step is padded up to a bucket: decode steps (one token
per sequence) to a batch-size bucket, every other step (prefill chunks, mixed prefill + decode) to
a token-count bucket. The eager path pads to the same buckets, so the matmuls see the same shapes
with graphs on or off and greedy outputs stay identical either way.

A prefill chunk over a long cached context (chunked prefill of a long prompt, a prefix-cache hit)
has few query tiles, each streaming thousands of cached tokens: on the plain grid a few dozen
programs run long while most SMs idle, and the decodes sharing the step wait for them. Such steps
get a long-context variant of their mixed shape, whose attention splits every tile's KV range
(`kv_splits`), picked when the step's longest context reaches LONG_CONTEXT tokens. Decode steps of
few sequences can get the opposite, opt-in (LLM_SHORT_DECODE_CONTEXT): a variant that never splits,
for short contexts (ShapeBuckets.__init__ says why).

Padding is inert: padding tokens belong to no sequence (their K/V slot is -1, never written),
padding sequences have no query tokens and an empty context, and padding sampling rows read row 0.

All index inputs of a step travel to the device in one int64 buffer laid out as

    [input_ids T | positions T | slot_mapping T | context_lens S | cu_seqlens_q S+1 |
     logits_indices S | fill_src S | table_width 1 | greedy_host_addr 1 | block_tables S x width]

for T tokens and S sequences (padded), so one host-to-device copy carries a step. fill_src is, per
sequence, the row of the previous step's sampled tokens that holds its one query token (-1: the
token is in input_ids already); table_width is the block tables' width; greedy_host_addr is where
in pinned host memory the step's CUDA graph writes its greedy results (0: nowhere). The step's
first kernel (kernels/step_inputs.py) fills in the tokens, casts and copies the tables.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from engine.model import StepInputs


@dataclass(frozen=True)
class StepShape:
    num_tokens: int   # T, padded
    num_seqs: int     # S, padded
    decode: bool      # one query token per sequence
    # > 1: attention splits each tile's KV range this many ways (long context); 1: it never splits
    # (a short-context decode variant, LLM_SHORT_DECODE_CONTEXT); 0: the kernel's own choice.
    kv_splits: int = 0

    @property
    def max_seqlen_q(self) -> int:
        return 1 if self.decode else self.num_tokens

    @property
    def head_len(self) -> int:
        """Length of the layout before the block tables."""
        return 3 * self.num_tokens + 4 * self.num_seqs + 3

    def head_slices(self) -> dict[str, slice]:
        t, s = self.num_tokens, self.num_seqs
        bounds = {"input_ids": t, "positions": t, "slot_mapping": t, "context_lens": s,
                  "cu_seqlens_q": s + 1, "logits_indices": s, "fill_src": s, "table_width": 1,
                  "greedy_host_addr": 1}
        out, at = {}, 0
        for name, n in bounds.items():
            out[name] = slice(at, at + n)
            at += n
        return out


@dataclass
class Int32Inputs:
    """Where a step's int32 inputs are made (prepare_step_inputs): the block tables, at least the
    step's S rows and its width wide, and the per-sequence arrays, at least S and S + 1 long."""
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    cu_seqlens_q: torch.Tensor

    @classmethod
    def new(cls, num_seqs: int, max_blocks: int, device, zeroed: bool) -> "Int32Inputs":
        """zeroed=False for one step's own buffers, every element of which the kernel writes; the
        graphs' shared buffers start zeroed (table columns past a step's width stay as they are)."""
        make = torch.zeros if zeroed else torch.empty
        i32 = dict(dtype=torch.int32, device=device)
        return cls(make((num_seqs, max_blocks), **i32), make(num_seqs, **i32), make(num_seqs + 1, **i32))


def step_inputs(ops, packed: torch.Tensor, shape: StepShape, feedback: torch.Tensor, out: Int32Inputs,
                max_context_len: int | None) -> StepInputs:
    """The model's inputs for a packed step: queues prepare_step_inputs (the fill-in of tokens from
    `feedback`, the previous step's sampled tokens; the int32 arrays into `out`) and returns views
    of `packed` and `out`."""
    v = {name: packed[sl] for name, sl in shape.head_slices().items()}
    s = shape.num_seqs
    ops.prepare_step_inputs(v["input_ids"], v["cu_seqlens_q"], v["context_lens"], v["fill_src"], feedback,
                            v["table_width"], packed[shape.head_len:], out.block_tables, out.context_lens,
                            out.cu_seqlens_q)
    return StepInputs(
        input_ids=v["input_ids"], positions=v["positions"], slot_mapping=v["slot_mapping"],
        block_tables=out.block_tables[:s], context_lens=out.context_lens[:s],
        cu_seqlens_q=out.cu_seqlens_q[:s + 1], max_seqlen_q=shape.max_seqlen_q,
        logits_indices=v["logits_indices"], max_context_len=max_context_len,
        num_kv_splits=shape.kv_splits or None)


def decode_buckets(max_batch: int) -> list[int]:
    """Batch sizes: 1, 2, 4, 8, then every 16, and max_batch itself."""
    small = [b for b in (1, 2, 4, 8) if b < max_batch]
    return sorted(set(small + list(range(16, max_batch + 1, 16)) + [max_batch]))


def token_buckets(max_tokens: int) -> list[int]:
    """Token counts: powers of two from 16 to 512, then every 256 (padding at most 1/3 of a
    large, compute-bound step), and max_tokens itself. All multiples of 16 but the last."""
    small = [t for t in (16, 32, 64, 128, 256, 512) if t < max_tokens]
    return sorted(set(small + list(range(768, max_tokens + 1, 256)) + [max_tokens]))


class ShapeBuckets:
    """Which padded shape a step gets (None: run it as it is; too large for any bucket).

    Prefill/mixed steps are bucketed by token count and, within that, by sequence count: each
    padding sequence still costs the attention kernel a program per KV head (it exits at once,
    but after a search), so a 256-token chunk beside 32 decodes must not pay for 256 sequences.
    Mixed steps of up to LONG_CONTEXT_MAX_TOKENS tokens also get a long-context variant.
    """

    MAX_DECODE_BATCH = 256      # larger decode batches are padded as mixed steps
    MIXED_SEQ_BUCKETS = (16, 64, 256)
    LONG_CONTEXT = 2048         # longest context in the step from which KV splits pay off
    LONG_CONTEXT_MAX_TOKENS = 1024   # larger steps have enough query tiles to fill the GPU
    # H100, 1B shape, 32 decodes + a 224-token chunk over up to 8k context: p99 step 3.98 ms with 4
    # splits, 4.30 with 8, ~5.9 with 16, 4.6 unsplit (perf/results/2026-11-23-h100/async/splits/):
    # every split adds programs and partial results for the whole padded step, not only the chunk.
    # Measured again with the attention budget of prefill chunks: 4 / 8 / 16 splits -> ITL ratio
    # 2.01x / 2.45x / 2.79x (part4/splits_77e5a15), 8 splits 2.19x once empty splits stopped
    # writing partials (part4/empty_splits_30edc0e).
    LONG_CONTEXT_SPLITS = 4
    # A step of at most 16 sequences (a prefix-cache hit: one sequence's few tokens over a long
    # cached context) has only its KV heads' programs on the plain grid (8 for the 1B shape):
    # 16 splits spread them over ~all SMs of an H100.
    FEW_SEQS, FEW_SEQS_LONG_CONTEXT_SPLITS = 16, 16

    def __init__(self, max_num_seqs: int, max_num_batched_tokens: int, max_model_len: int = 0,
                 short_decode_context: int | None = None):
        self.max_num_seqs = max_num_seqs
        # A decode graph is captured with the block tables' full width as its context bound, so at
        # a batch of few sequences the attention splits every KV range about 33 ways (choose_num_splits:
        # two programs per SM) and a merge kernel follows, also at a context of a few hundred
        # tokens, where only a few splits have work. With LLM_SHORT_DECODE_CONTEXT=N, decode steps of
        # at most FEW_SEQS sequences whose longest context is at most N tokens get a variant
        # without splits. Off by default: not yet measured on a GPU.
        self.short_decode_context = (short_decode_context if short_decode_context is not None
                                     else int(os.environ.get("LLM_SHORT_DECODE_CONTEXT", "0") or 0))
        self.decode = decode_buckets(min(max_num_seqs, self.MAX_DECODE_BATCH))
        self.tokens = token_buckets(max(max_num_batched_tokens, max_num_seqs))
        self.long_context = max_model_len > self.LONG_CONTEXT

    def long_context_splits(self, num_seqs: int) -> int:
        """KV splits of the long-context variant of a mixed shape with `num_seqs` (padded) sequences."""
        return self.FEW_SEQS_LONG_CONTEXT_SPLITS if num_seqs <= self.FEW_SEQS else self.LONG_CONTEXT_SPLITS

    def mixed_seq_buckets(self, num_tokens: int) -> list[int]:
        """Sequence counts for a token bucket; the last one, min(tokens, max_num_seqs), holds any
        step of that many tokens (every sequence in a step has at least one token)."""
        most = min(num_tokens, self.max_num_seqs)
        return sorted({min(s, most) for s in self.MIXED_SEQ_BUCKETS} | {most})

    def all_shapes(self) -> list[StepShape]:
        mixed = [StepShape(t, s, False) for t in self.tokens for s in self.mixed_seq_buckets(t)]
        if self.long_context:
            mixed += [StepShape(m.num_tokens, m.num_seqs, False, self.long_context_splits(m.num_seqs))
                      for m in mixed if m.num_tokens <= self.LONG_CONTEXT_MAX_TOKENS]
        decode = [StepShape(b, b, True) for b in self.decode]
        if self.short_decode_context > 0:
            decode += [StepShape(b, b, True, 1) for b in self.decode if b <= self.FEW_SEQS]
        return decode + mixed

    def pick(self, num_tokens: int, num_seqs: int, max_seqlen_q: int, max_context: int = 0) -> StepShape | None:
        if max_seqlen_q == 1 and num_seqs <= self.decode[-1]:
            b = next(b for b in self.decode if b >= num_seqs)
            short = b <= self.FEW_SEQS and 0 < max_context <= self.short_decode_context
            return StepShape(b, b, True, 1 if short else 0)
        if num_tokens <= self.tokens[-1] and num_seqs <= self.max_num_seqs:
            t = next(t for t in self.tokens if t >= num_tokens)
            s = next(s for s in self.mixed_seq_buckets(t) if s >= num_seqs)
            splits = (self.long_context_splits(s) if self.long_context and max_context >= self.LONG_CONTEXT
                      and t <= self.LONG_CONTEXT_MAX_TOKENS else 0)
            return StepShape(t, s, False, splits)
        return None
