"""CUDA graphs for engine steps: one launch per step instead of hundreds of kernel launches.

Eager, a step costs ~10-20 ms of host time on an H100 machine (Python and launch overhead of ~150
kernels) whatever its GPU work, which made every step with a prefill in it slow and stalled the
streams decoding beside it. So every padded step shape (engine/step_shapes.py: decode batch-size
buckets and token-count buckets for prefill/mixed steps) is captured once at start-up; a step copies
its inputs into the graphs' static buffers and replays the graph of its shape.

The graphs read their inputs from the runner's int64 input buffer, in the layout of step_shapes
(the runner copies a step's packed inputs straight into it); each graph's first kernel fills in
the tokens still in flight from the runner's `feedback` buffer and makes the int32 inputs (block
tables at the full width, which the attention kernels read), so a replay costs one host-to-device
copy and the launch.

Each graph also computes every row's greedy token and its log-probability (the sampler's
argmax/logsumexp kernel, `greedy`), writing the tokens into `feedback` (where the next step reads
them) and both into pinned host memory at the address the step's inputs carry: a step whose
requests all sample greedily (the common case) then needs no sampling launches of its own and no
copy after the graph. Two Triton launches and their scratch tensors cost ~6% of the engine thread
at batch 128 (py-spy, perf/results/2026-11-24-h100/served_host_path/).
"""
from __future__ import annotations

import logging
import time

import torch

from engine.model import LlamaModel, StepInputs
from engine.step_shapes import Int32Inputs, StepShape, step_inputs

log = logging.getLogger(__name__)


class StepGraphs:
    def __init__(self, model: LlamaModel, kv_cache, shapes: list[StepShape], inputs: torch.Tensor,
                 feedback: torch.Tensor, max_blocks_per_seq: int, block_size: int, device: torch.device,
                 argmax_logsumexp=None):
        """inputs: the runner's device buffer that each step's packed inputs are copied into
        (int64, at least the largest shape's head_len + tables long); the graphs read from it.
        feedback: int64, a row per sequence: where the previous step's sampled tokens are read
        from and where the graphs' greedy tokens go.
        argmax_logsumexp: the sampler's kernel (kernels.sampling), captured after the forward."""
        self.model = model
        self.kv_cache = kv_cache
        self.shapes = shapes
        self.max_context_len = max_blocks_per_seq * block_size
        max_seqs = max(s.num_seqs for s in shapes)
        assert inputs.dtype == torch.long
        assert inputs.numel() >= max(s.head_len + s.num_seqs * max_blocks_per_seq for s in shapes)
        assert feedback.dtype == torch.long and feedback.numel() >= max_seqs
        self.flat = inputs
        self.feedback = feedback
        self.int32 = Int32Inputs.new(max_seqs, max_blocks_per_seq, device, zeroed=True)
        self.graphs: dict[StepShape, torch.cuda.CUDAGraph] = {}
        # One logits buffer for all graphs, outside their memory pool: a graph's own output would
        # stay allocated in the pool, and at [256, 128k] fp32 that is 131 MB for each of ~100 graphs.
        w = model.w["lm_head"]
        self.logits = torch.empty((max(s.num_seqs for s in shapes), w.shape[0]), dtype=w.dtype, device=device)
        # The greedy results [tokens S | log-probs S] on the device; the kernel writes the same to
        # the host buffer whose address the step's inputs carry.
        self.argmax_logsumexp = argmax_logsumexp
        self.greedy_out = torch.empty(2 * max_seqs, dtype=torch.float64, device=device)

    def _inputs(self, shape: StepShape) -> StepInputs:
        """The captured forward's inputs: views of the static buffers, made ready by a kernel
        inside the graph."""
        return step_inputs(self.model.ops, self.flat, shape, self.feedback, self.int32, self.max_context_len)

    def fill_inert(self, shape: StepShape) -> None:
        """Valid inputs for warm-up and capture: every token padding, every sequence empty, no
        token to fill in, no table, no host address."""
        sl = shape.head_slices()
        self.flat.zero_()
        self.flat[sl["slot_mapping"]] = -1
        self.flat[sl["fill_src"]] = -1

    @torch.inference_mode()
    def capture(self) -> None:
        t0 = time.perf_counter()
        pool = None
        # Largest first, so smaller graphs fit in the memory the largest one's pool already holds.
        for shape in sorted(self.shapes, key=lambda s: (s.num_tokens, s.num_seqs), reverse=True):
            self.fill_inert(shape)
            self._forward(shape)   # warm up: Triton compiles here
            torch.cuda.synchronize()
            torch.cuda.empty_cache()   # the warm-up's activations go back, for the pool to take
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._forward(shape)
            pool = graph.pool() if pool is None else pool
            self.graphs[shape] = graph
        torch.cuda.synchronize()
        log.info("captured %d CUDA graphs (step shapes) in %.1f s", len(self.graphs), time.perf_counter() - t0)

    def _forward(self, shape: StepShape) -> None:
        out = self.logits[:shape.num_seqs]
        self.model.forward(self._inputs(shape), self.kv_cache, out)
        if self.argmax_logsumexp is not None:
            self.argmax_logsumexp(out, greedy_out=self.greedy_out[:2 * shape.num_seqs],
                                  ids_out=self.feedback[:shape.num_seqs],
                                  host_addr=self.flat[shape.head_slices()["greedy_host_addr"]])

    @property
    def computes_greedy(self) -> bool:
        """Whether each replay leaves its greedy tokens in `feedback` and its [tokens | log-probs]
        at the step's greedy_host_addr."""
        return self.argmax_logsumexp is not None

    def __contains__(self, shape: StepShape | None) -> bool:
        return shape in self.graphs

    @torch.inference_mode()
    def replay(self, shape: StepShape) -> torch.Tensor:
        """Run one step whose packed inputs (step_shapes layout) are in the inputs buffer.
        Returns the graph's logits buffer [S, vocab], valid until the next replay."""
        self.graphs[shape].replay()
        return self.logits[:shape.num_seqs]
