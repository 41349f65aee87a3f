"""Owns the weights and the KV cache on one device; turns a scheduled batch into logits."""
from __future__ import annotations

import logging

import numpy as np
import torch

from engine.config import EngineConfig, ModelConfig
from engine.loader import fused_weights, load_state_dict
from engine.cuda_graphs import StepGraphs
from engine.model import LlamaModel, StepInputs
from engine.scheduler import ScheduledBatch
from engine.step_shapes import Int32Inputs, ShapeBuckets, StepShape, step_inputs

log = logging.getLogger(__name__)


def make_current(device: torch.device) -> None:
    """Make `device` this thread's current CUDA device. CUDA's current device is per host thread
    and a new thread starts on device 0, while event records, current_stream() and Triton's
    launches all follow the current device: an engine on cuda:1 stepped from another thread would
    record its events on device 0's idle stream (its tokens read before they arrive) and launch
    its Triton kernels there."""
    if device.type == "cuda" and torch.cuda.current_device() != device.index:
        torch.cuda.set_device(device)


class ModelRunner:
    def __init__(self, config: EngineConfig, model_cfg: ModelConfig, max_model_len: int):
        from kernels import get_ops  # the Triton kernels on CUDA, their PyTorch references on CPU

        self.config = config
        self.model_cfg = model_cfg
        self.device = torch.device(config.device)
        if self.device.type == "cuda":
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            make_current(self.device)
        self.dtype = config.resolved_dtype()
        self.block_size = config.block_size
        self.max_model_len = max_model_len
        self._staging = _StagingBuffers() if self.device.type == "cuda" else None   # step inputs, host side
        self.last_shape: StepShape | None = None   # the padded shape of the last step (diagnostics)
        weights = fused_weights(model_cfg, load_state_dict(config.model_dir, self.dtype, self.device))
        self.model = LlamaModel(model_cfg, weights, get_ops(self.device), max_model_len,
                                max_num_seqs=max(config.max_num_seqs, 1))
        self.num_blocks = config.num_kv_blocks or self._blocks_that_fit()
        if self.num_blocks < 1:
            raise RuntimeError("no memory left for the KV cache: lower max_num_batched_tokens or raise "
                               "kv_cache_memory_fraction")
        shape = (self.num_blocks, self.block_size, model_cfg.num_kv_heads, model_cfg.head_dim)
        self.kv_cache = [(torch.empty(shape, dtype=self.dtype, device=self.device),
                          torch.empty(shape, dtype=self.dtype, device=self.device))
                         for _ in range(model_cfg.num_layers)]
        # On the GPU every step is padded to a bucket shape (step_shapes), captured as a CUDA
        # graph unless enforce_eager; the CPU runs steps as they come.
        self.buckets = self.graphs = None
        # The last step's greedy results, when its graph computed them: (every row's token on the
        # device, [tokens | log-probs] in pinned host memory).
        self.last_greedy = None
        max_blocks = -(-max_model_len // self.block_size)
        self.max_context_len = max_blocks * self.block_size
        # The previous step's sampled tokens, one row per sampling sequence, where a step reads the
        # tokens the host has not seen yet (asynchronous scheduling; prepare_step_inputs).
        self.feedback = torch.zeros(max(config.max_num_seqs, 1), dtype=torch.long, device=self.device)
        if self.device.type == "cuda":
            self.buckets = ShapeBuckets(config.max_num_seqs, config.max_num_batched_tokens, max_model_len)
            shapes = self.buckets.all_shapes()
            # Where each step's packed inputs land (step_shapes layout); the graphs read from it.
            self.inputs = torch.zeros(max(s.head_len + s.num_seqs * max_blocks for s in shapes),
                                      dtype=torch.long, device=self.device)
            if not config.enforce_eager:
                self.graphs = StepGraphs(self.model, self.kv_cache, shapes, self.inputs, self.feedback,
                                         max_blocks, self.block_size, self.device,
                                         get_ops(self.device).argmax_logsumexp)
                self.graphs.capture()
                # Pinned host buffers the graphs write their greedy results into, used in turn: a
                # step's results are read before the step after next is launched (engine.step), so
                # two would never be written while the host reads them; four leave a margin.
                rows = max(s.num_seqs for s in shapes)
                self._greedy_host = [torch.zeros(2 * rows, dtype=torch.float64, pin_memory=True)
                                     for _ in range(4)]
                self._greedy_turn = 0
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
        n = max(self.config.max_num_batched_tokens, self.config.max_num_seqs)   # the largest step
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

    def prepare(self, batch: ScheduledBatch, shape: StepShape | None, prev_tokens: torch.Tensor | None = None,
                greedy_host: torch.Tensor | None = None) -> tuple[torch.Tensor, int, int, bool]:
        """Pack the batch, padded to `shape` (None: unpadded), in the step_shapes layout and copy it
        to the device in one transfer. Tokens still in flight (`seq.num_pending`) are marked to be
        read on the device from `feedback`, where run() puts `prev_tokens`, the previous step's
        sampled tokens. greedy_host: the pinned buffer the step's graph writes its greedy results
        to. Returns (packed inputs on the device, block-table width, number of sampling rows,
        whether a token is read from the previous step's)."""
        bs = self.block_size
        input_ids, positions, slots, cu, ctx, logits_idx, fill_src = [], [], [], [0], [], [], []
        n_tok = 0
        # Per sequence in Python, so every line here is paid ~100 times a step at high batch: a
        # decode (one token) takes the short path.
        for seq, n, samples in zip(batch.seqs, batch.num_new_tokens, batch.sampling_flags()):
            start = seq.num_computed_tokens
            table = seq.block_table
            if n == 1:
                if start < len(seq.token_ids):
                    input_ids.append(seq.token_ids[start])
                    fill_src.append(-1)
                else:   # its last token is in flight: read on the device
                    assert seq.num_pending and prev_tokens is not None
                    fill_src.append(seq.pending_row)
                    input_ids.append(0)
                positions.append(start)
                slots.append(table[start // bs] * bs + start % bs)
            else:
                end = start + n
                known = seq.token_ids[start:end]
                assert len(known) == n, "only a decode reads its token from the previous step"
                input_ids.extend(known)
                positions.extend(range(start, end))
                slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
                fill_src.append(-1)
            n_tok += n
            cu.append(n_tok)
            ctx.append(start + n)
            if samples:
                logits_idx.append(n_tok - 1)
        num_sampling = len(logits_idx)
        if shape is not None:   # inert padding (see step_shapes)
            pad_t, pad_s = shape.num_tokens - n_tok, shape.num_seqs - len(batch.seqs)
            input_ids += [0] * pad_t
            positions += [0] * pad_t
            slots += [-1] * pad_t
            ctx += [0] * pad_s
            cu += [n_tok] * pad_s
            fill_src += [-1] * pad_s
        logits_idx += [0] * (len(ctx) - num_sampling)   # one row per sequence; extras read row 0
        # Block tables through numpy, all rows in one assignment: one long context makes every row
        # that wide (a Python list of S x width ints cost milliseconds per step at 8k tokens of
        # context), and a numpy assignment per row cost ~2 us per sequence. Each sequence keeps a
        # numpy copy of its table, made again only when the table changed: converting every
        # table's ints every step was ~7% of the engine thread at batch 128.
        arrays = [self._block_table_array(s) for s in batch.seqs]
        lengths = [len(a) for a in arrays]
        width = max(lengths)
        head = (input_ids + positions + slots + ctx + cu + logits_idx + fill_src
                + [width, 0 if greedy_host is None else greedy_host.data_ptr()])
        total = len(head) + len(ctx) * width
        staging = self._staging.take(total) if self._staging is not None else None
        flat_np = staging.numpy()[:total] if staging is not None else np.empty(total, dtype=np.int64)
        flat_np[:len(head)] = head
        tables = flat_np[len(head):total].reshape(len(ctx), width)
        blocks = np.concatenate(arrays)
        if len(blocks) == len(ctx) * width:   # every row full (no padding rows, equal lengths)
            tables.reshape(-1)[:] = blocks
        else:
            tables[:] = 0
            rows = tables[:len(lengths)]
            rows[np.arange(width) < np.array(lengths)[:, None]] = blocks   # row-major, like `blocks`
        if staging is None:
            packed = torch.from_numpy(flat_np)
        else:
            packed = (self.inputs[:total] if total <= self.inputs.numel()
                      else torch.empty(total, dtype=torch.long, device=self.device))
            packed.copy_(staging[:total], non_blocking=True)
            self._staging.copy_queued()
        return packed, width, num_sampling, fill_src.count(-1) < len(fill_src)

    @staticmethod
    def _block_table_array(seq) -> np.ndarray:
        """seq.block_table as int64 numpy, cached on the sequence. A table is only ever replaced
        (admission, preemption) or appended to (growth), so the same list object at the same
        length has the same contents."""
        table, cached = seq.block_table, seq.block_table_array
        if cached is None or cached[0] is not table or len(cached[1]) != len(table):
            cached = seq.block_table_array = (table, np.array(table, dtype=np.int64))
        return cached[1]

    def _eager_inputs(self, packed: torch.Tensor, shape: StepShape, width: int, padded: bool) -> StepInputs:
        """The step's inputs outside a graph, made ready by the same kernel. A padded step gets the
        graphs' attention bound too, so eager and replayed runs of one shape launch the same kernels."""
        out = Int32Inputs.new(shape.num_seqs, width, packed.device, zeroed=False)
        return step_inputs(self.model.ops, packed, shape, self.feedback, out,
                           self.max_context_len if padded else None)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch, prev_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (the model's dtype) for every sequence of the batch that samples this step, in
        batch order; the sampler reads them as they are (an fp32 copy would be one more kernel
        and, at batch 256, 128 MB a step). Only queues device work. prev_tokens: the previous
        step's sampled tokens on the device, for sequences whose last token the host has not
        read yet. After a replayed graph, `last_greedy` holds its greedy results (every row's
        token on the device, and tokens and log-probabilities in host memory)."""
        num_tokens, max_q = sum(batch.num_new_tokens), max(batch.num_new_tokens)
        shape = None
        if self.buckets:
            max_context = max(s.num_computed_tokens + n for s, n in zip(batch.seqs, batch.num_new_tokens))
            shape = self.buckets.pick(num_tokens, len(batch.seqs), max_q, max_context)
        self.last_shape = shape
        replay = self.graphs is not None and shape in self.graphs
        greedy_host = None
        if replay:
            self._greedy_turn = (self._greedy_turn + 1) % len(self._greedy_host)
            greedy_host = self._greedy_host[self._greedy_turn]
        packed, width, num_sampling, fills = self.prepare(batch, shape, prev_tokens, greedy_host)
        if fills and prev_tokens.data_ptr() != self.feedback.data_ptr():
            # Sampled outside a graph (a non-greedy request, an eager step): where steps read them
            # (queued before the step's first kernel, like the inputs' copy).
            self.feedback[:prev_tokens.numel()].copy_(prev_tokens)
        self.last_greedy = None
        if replay:
            logits = self.graphs.replay(shape)
            if self.graphs.computes_greedy:
                self.last_greedy = (self.feedback[:shape.num_seqs], greedy_host[:2 * shape.num_seqs])
        else:
            padded = shape is not None
            if not padded:   # the step's own sizes
                shape = StepShape(num_tokens, len(batch.seqs), decode=max_q == 1)
            logits = self.model.forward(self._eager_inputs(packed, shape, width, padded), self.kv_cache)
        return logits[:num_sampling]


class _StagingBuffers:
    """Pinned host buffers that steps pack their inputs into (through numpy, never torch: a torch
    copy of more than 32,768 elements, its grain size, runs on the intra-op thread pool, and waking
    it stalled steps by 1-5 ms on the H100 machines once long contexts made the block tables that
    large, perf/results/2026-11-23-h100/part4/context_sweep). Two, used in turn: when a step is
    packed, the previous step's copy to the device may still be queued (asynchronous scheduling).

    A buffer is written again two steps later, and its copy must have run by then. Usually the
    host has waited for the GPU in between (reading a step's sampled tokens), but a step that
    samples nothing (a chunk of a long prompt, no decodes running) makes the host wait for
    nothing, and it can run several steps ahead of the GPU: the chunk after next would overwrite
    this chunk's tokens, positions and slots before the GPU copied them. So each copy records an
    event, and a buffer is handed out again only once its last copy is done."""

    def __init__(self):
        self._buffers: list[torch.Tensor | None] = [None, None]
        self._copied: list[torch.cuda.Event | None] = [None, None]
        self._turn = 0

    def take(self, total: int) -> torch.Tensor:
        """The next buffer, at least `total` int64 long, free to write."""
        self._turn ^= 1
        if self._copied[self._turn] is not None:
            self._copied[self._turn].synchronize()
        buffer = self._buffers[self._turn]
        if buffer is None or buffer.numel() < total:
            # The old buffer may still be read by a queued copy; the pinned allocator keeps it
            # until that copy has run.
            buffer = self._buffers[self._turn] = torch.empty(max(total, 1 << 16), dtype=torch.long,
                                                            pin_memory=True)
        return buffer

    def copy_queued(self) -> None:
        """Call once the copy out of the buffer `take` returned is queued on the current stream."""
        if self._copied[self._turn] is None:
            self._copied[self._turn] = torch.cuda.Event()
        self._copied[self._turn].record()
