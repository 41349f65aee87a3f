"""CUDA graphs for decode steps: one launch per step instead of hundreds of kernel launches.

A decode step (every sequence contributes one token) has a shape fixed by its batch size alone, so
we capture the whole forward once per batch-size bucket into static buffers and, each step, copy
the step's inputs into those buffers and replay the smallest bucket that fits. Padding rows get
query length 0 (their attention output is never read) and slot -1 (their K/V is not written), so
real rows compute exactly what the eager path computes. Mixed prefill steps, and batches larger
than the largest bucket, run eagerly.
"""
from __future__ import annotations

import torch

from engine.model import LlamaModel, StepInputs


def default_buckets(max_batch: int) -> list[int]:
    small = [b for b in (1, 2, 4, 8) if b < max_batch]
    return sorted(set(small + list(range(16, max_batch + 1, 16)) + [max_batch]))


class DecodeGraphs:
    def __init__(self, model: LlamaModel, kv_cache, max_batch: int, max_blocks_per_seq: int,
                 device: torch.device):
        self.model = model
        self.kv_cache = kv_cache
        self.buckets = default_buckets(max_batch)
        self.max_batch = self.buckets[-1]
        n, w = self.max_batch, max_blocks_per_seq
        self.inputs = StepInputs(
            input_ids=torch.zeros(n, dtype=torch.long, device=device),
            positions=torch.zeros(n, dtype=torch.long, device=device),
            slot_mapping=torch.full((n,), -1, dtype=torch.long, device=device),
            block_tables=torch.zeros((n, w), dtype=torch.int32, device=device),
            context_lens=torch.zeros(n, dtype=torch.int32, device=device),
            cu_seqlens_q=torch.zeros(n + 1, dtype=torch.int32, device=device),
            max_seqlen_q=1,
            logits_indices=torch.arange(n, device=device))
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = None

    def _view(self, b: int) -> StepInputs:
        x = self.inputs
        return StepInputs(x.input_ids[:b], x.positions[:b], x.slot_mapping[:b], x.block_tables[:b],
                          x.context_lens[:b], x.cu_seqlens_q[:b + 1], 1, x.logits_indices[:b])

    @torch.inference_mode()
    def capture(self) -> None:
        # Largest first, so smaller graphs reuse its memory pool.
        for b in reversed(self.buckets):
            view = self._view(b)
            self.model.forward(view, self.kv_cache)   # warm up (Triton compiles/autotunes here)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.outputs[b] = self.model.forward(view, self.kv_cache)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[b] = graph
        torch.cuda.synchronize()

    def fits(self, num_seqs: int, max_seqlen_q: int, num_blocks: int) -> bool:
        return (max_seqlen_q == 1 and num_seqs <= self.max_batch
                and num_blocks <= self.inputs.block_tables.shape[1])

    @torch.inference_mode()
    def run(self, x: StepInputs) -> torch.Tensor:
        """Replay for a decode step prepared by ModelRunner.prepare (index tensors on the device,
        any integer dtype: copy_ casts them into the static buffers)."""
        n = x.input_ids.shape[0]
        b = next(b for b in self.buckets if b >= n)
        s = self.inputs
        s.input_ids[:n].copy_(x.input_ids)
        s.positions[:n].copy_(x.positions)
        s.slot_mapping[:n].copy_(x.slot_mapping)
        s.slot_mapping[n:b].fill_(-1)
        s.block_tables[:n, :x.block_tables.shape[1]].copy_(x.block_tables)
        s.context_lens[:n].copy_(x.context_lens)
        s.context_lens[n:b].fill_(0)
        s.cu_seqlens_q[:n + 1].copy_(x.cu_seqlens_q)
        s.cu_seqlens_q[n + 1:b + 1].fill_(n)       # padding rows: zero query tokens
        self.graphs[b].replay()
        return self.outputs[b][:n]
