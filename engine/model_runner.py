"""Owns the weights and the KV cache on one device; turns a scheduled batch into logits."""
from __future__ import annotations

import logging

import torch

from engine.config import EngineConfig, ModelConfig
from engine.loader import fused_weights, load_state_dict
from engine.cuda_graphs import DecodeGraphs
from engine.model import LlamaModel, StepInputs
from engine.scheduler import ScheduledBatch

log = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, config: EngineConfig, model_cfg: ModelConfig, max_model_len: int):
        from kernels import get_ops  # the Triton kernels on CUDA, their PyTorch references on CPU

        self.config = config
        self.model_cfg = model_cfg
        self.device = torch.device(config.device)
        if self.device.type == "cuda":
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        self.dtype = config.resolved_dtype()
        self.block_size = config.block_size
        self.max_model_len = max_model_len
        self._staging: torch.Tensor | None = None   # pinned host buffer for step inputs
        weights = fused_weights(model_cfg, load_state_dict(config.model_dir, self.dtype, self.device))
        self.model = LlamaModel(model_cfg, weights, get_ops(self.device), max_model_len)
        self.num_blocks = config.num_kv_blocks or self._blocks_that_fit()
        if self.num_blocks < 1:
            raise RuntimeError("no memory left for the KV cache: lower max_num_batched_tokens or raise "
                               "kv_cache_memory_fraction")
        shape = (self.num_blocks, self.block_size, model_cfg.num_kv_heads, model_cfg.head_dim)
        self.kv_cache = [(torch.empty(shape, dtype=self.dtype, device=self.device),
                          torch.empty(shape, dtype=self.dtype, device=self.device))
                         for _ in range(model_cfg.num_layers)]
        self.graphs = None
        if self.device.type == "cuda" and not config.enforce_eager:
            self.graphs = DecodeGraphs(self.model, self.kv_cache, min(config.max_num_seqs, 256),
                                       -(-max_model_len // self.block_size), self.device)
            self.graphs.capture()
        log.info("KV cache: %d blocks of %d tokens (%.2f GiB)", self.num_blocks, self.block_size,
                 self.num_blocks * self.bytes_per_block / 2**30)

    @property
    def bytes_per_block(self) -> int:
        c = self.model_cfg
        return 2 * c.num_layers * self.block_size * c.num_kv_heads * c.head_dim * self.dtype.itemsize

    def _blocks_that_fit(self) -> int:
        if self.device.type != "cuda":
            return int(self.config.cpu_kv_cache_gb * 2**30 // self.bytes_per_block)
        # Measure this process's peak (weights + activations of the largest step) with a dummy
        # prefill, then give the KV cache what remains of this instance's share of the GPU. Using
        # our own allocations, not the device's free memory, keeps instances that share a GPU
        # from racing each other.
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        n = self.config.max_num_batched_tokens
        blocks = -(-n // self.block_size)
        c = self.model_cfg
        scratch = [(torch.zeros(blocks, self.block_size, c.num_kv_heads, c.head_dim, dtype=self.dtype,
                                device=self.device),) * 2 for _ in range(c.num_layers)]
        batch = StepInputs(
            input_ids=torch.zeros(n, dtype=torch.long, device=self.device),
            positions=torch.arange(n, device=self.device) % self.max_model_len,
            slot_mapping=torch.arange(n, device=self.device),
            block_tables=torch.arange(blocks, dtype=torch.int32, device=self.device)[None],
            context_lens=torch.tensor([n], dtype=torch.int32, device=self.device),
            cu_seqlens_q=torch.tensor([0, n], dtype=torch.int32, device=self.device),
            max_seqlen_q=n, logits_indices=torch.arange(min(n, self.config.max_num_seqs), device=self.device))
        with torch.inference_mode():
            self.model.forward(batch, scratch)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - sum(t.numel() * t.itemsize for t, _ in scratch)
        del scratch
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(self.device).total_memory
        free, _ = torch.cuda.mem_get_info(self.device)
        budget = min(total * self.config.kv_cache_memory_fraction - peak, free - 512 * 2**20)
        return int(budget // self.bytes_per_block)

    def prepare(self, batch: ScheduledBatch) -> StepInputs:
        """Flatten the batch into the model's inputs with one host-to-device copy: every index
        array is packed into a single (pinned, on GPU) int64 buffer, then sliced on the device."""
        bs = self.block_size
        input_ids, positions, slots, cu, ctx, logits_idx = [], [], [], [0], [], []
        for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            cu.append(cu[-1] + n)
            ctx.append(end)
            if batch.samples(i):
                logits_idx.append(cu[-1] - 1)
        width = max(len(s.block_table) for s in batch.seqs)
        tables = [b for s in batch.seqs for b in s.block_table + [0] * (width - len(s.block_table))]
        parts = (input_ids, positions, slots, ctx, cu, logits_idx, tables)
        flat = torch.tensor([x for part in parts for x in part], dtype=torch.long)
        if self.device.type == "cuda":
            if self._staging is None or self._staging.numel() < flat.numel():
                self._staging = torch.empty(max(flat.numel(), 1 << 16), dtype=torch.long, pin_memory=True)
            staged = self._staging[:flat.numel()]
            staged.copy_(flat)
            flat = staged.to(self.device, non_blocking=True)
        views, offset = [], 0
        for part in parts:
            views.append(flat[offset:offset + len(part)])
            offset += len(part)
        ids_t, pos_t, slot_t, ctx_t, cu_t, idx_t, tables_t = views
        # Still int64 here: a graph replay copies them into its own int32 buffers (casting on the
        # way), so only the eager path pays for the conversion (see run()).
        return StepInputs(
            input_ids=ids_t, positions=pos_t, slot_mapping=slot_t,
            block_tables=tables_t.view(len(batch.seqs), width), context_lens=ctx_t, cu_seqlens_q=cu_t,
            max_seqlen_q=max(batch.num_new_tokens), logits_indices=idx_t)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> torch.Tensor:
        """fp32 logits for every sequence of the batch that samples this step, in batch order."""
        x = self.prepare(batch)
        n = x.input_ids.shape[0]
        if (self.graphs is not None and x.logits_indices.shape[0] == n
                and self.graphs.fits(n, x.max_seqlen_q, x.block_tables.shape[1])):
            return self.graphs.run(x)
        x.block_tables = x.block_tables.to(torch.int32)
        x.context_lens = x.context_lens.to(torch.int32)
        x.cu_seqlens_q = x.cu_seqlens_q.to(torch.int32)
        return self.model.forward(x, self.kv_cache)
