"""The Llama decoder over a paged KV cache.

One forward handles a whole engine step: the tokens of every scheduled sequence are packed into one
flat [T] batch (prefill chunks and single decode tokens side by side). Position-wise layers run on
[T, hidden]; attention reads each sequence's keys/values from the paged cache through its block
table. The elementwise and attention ops come from `kernels` (Triton on CUDA, PyTorch reference on
CPU), so this file only says *what* the model computes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.config import ModelConfig
from engine.rope import cos_sin_table


@dataclass
class StepInputs:
    """Everything one forward needs besides the weights and the cache (all on the model's device)."""
    input_ids: torch.Tensor      # [T] int64
    positions: torch.Tensor      # [T] int64
    slot_mapping: torch.Tensor   # [T] int64: flat cache slot for each token's K/V, -1 = padding
    block_tables: torch.Tensor   # [B, max_blocks] int32
    context_lens: torch.Tensor   # [B] int32: tokens in cache per sequence, this step's included
    cu_seqlens_q: torch.Tensor   # [B+1] int32: where each sequence's tokens start in the flat batch
    max_seqlen_q: int
    logits_indices: torch.Tensor  # [S] int64: rows whose next-token logits are needed
    # Host-side bound on context_lens for the attention kernel's launch choices (None: the block
    # table's width). CUDA graph and eager runs of a step pass the same, so they run the same kernels.
    max_context_len: int | None = None
    # Split-KV count for the attention kernel (None: its own heuristic); set by long-context
    # step shapes (step_shapes.py) so a chunk over a long context spreads over the SMs.
    num_kv_splits: int | None = None


class LlamaModel:
    def __init__(self, cfg: ModelConfig, weights: dict[str, torch.Tensor], ops, max_positions: int,
                 max_num_seqs: int = 256):
        self.cfg = cfg
        self.w = weights
        self.ops = ops
        device = weights["embed"].device
        self.cos_sin = cos_sin_table(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling, device)
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        self.scale = cfg.head_dim ** -0.5
        # One sequence's one decode token (batch-1 decode) takes each layer's attention half as a
        # single kernel where the ops have one for this shape (kernels/decode_block.py).
        self.decode_block = ops.decode_block_fits(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
                                                  cfg.head_dim, weights["embed"].dtype, device)
        # Scratch of the decode attention: the last split of each (sequence, KV head) merges the
        # splits, counting arrivals here (kernels/attention.py). Every layer, graph or eager,
        # shares it: layers run one after another, and each launch leaves it at zero.
        self.merge_counters = torch.zeros(max_num_seqs * cfg.num_kv_heads, dtype=torch.int32, device=device)

    def forward(self, x: StepInputs, kv_cache: list[tuple[torch.Tensor, torch.Tensor]],
                logits_out: torch.Tensor | None = None) -> torch.Tensor:
        """Returns logits [S, vocab] in the model's dtype for the rows in `x.logits_indices`,
        written into `logits_out` when given (CUDA graphs share one such buffer)."""
        cfg, w, ops = self.cfg, self.w, self.ops
        h = F.embedding(x.input_ids, w["embed"])
        # Which sequence each query tile of the attention belongs to: once per step, not per layer.
        tile_seqs = ops.attention_tile_map(x.cu_seqlens_q, h.shape[0], x.max_seqlen_q, cfg.num_heads,
                                           cfg.num_kv_heads, cfg.head_dim, h.dtype)
        residual = None
        one_token = self.decode_block and h.shape[0] == 1 and x.block_tables.shape[0] == 1
        for i in range(cfg.num_layers):
            if one_token:
                h, residual = self._one_token_attention(i, h, residual, x, kv_cache[i])
            else:
                h, residual = self._attention(i, h, residual, x, kv_cache[i], tile_seqs)
            # The next layer's rms_norm_linear is the down projection's only reader: it may take
            # the split-K partials and sum them itself (kernels/linear.py, SplitSum).
            h, residual = ops.rms_norm_mlp(h, residual, w[f"{i}.post_norm"], cfg.rms_norm_eps,
                                           w[f"{i}.gate_up"], w[f"{i}.down"],
                                           keep_split=not one_token and i + 1 < cfg.num_layers)
        # Only the rows that sample need the final norm and the (large) vocabulary projection.
        h, residual = h[x.logits_indices], residual[x.logits_indices]
        h, _ = ops.fused_add_rms_norm(h, residual, w["norm"], cfg.rms_norm_eps)
        return ops.linear(h, w["lm_head"], out=logits_out)

    def _one_token_attention(self, i: int, h: torch.Tensor, residual: torch.Tensor | None,
                             x: StepInputs, cache) -> tuple[torch.Tensor, torch.Tensor]:
        """Input norm + _attention for a step of one token, in one op: (o output, new residual)."""
        w = self.w
        k_cache, v_cache = cache
        return self.ops.decode_attention_block(
            h, residual, w[f"{i}.input_norm"], w[f"{i}.qkv"], w[f"{i}.o"], self.cfg.rms_norm_eps,
            x.positions, self.cos_sin, k_cache, v_cache, x.slot_mapping, x.block_tables,
            x.context_lens, self.scale, max_context_len=x.max_context_len)

    def _attention(self, i: int, h: torch.Tensor, residual: torch.Tensor | None, x: StepInputs, cache,
                   tile_seqs) -> tuple[torch.Tensor, torch.Tensor]:
        """Input norm (after adding the residual) and the attention half of layer i: (o
        projection, new residual)."""
        cfg = self.cfg
        T = h.shape[0]
        qkv, residual = self.ops.rms_norm_linear(h, residual, self.w[f"{i}.input_norm"], cfg.rms_norm_eps,
                                                 self.w[f"{i}.qkv"])
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(T, cfg.num_heads, cfg.head_dim)
        k = k.view(T, cfg.num_kv_heads, cfg.head_dim)
        v = v.view(T, cfg.num_kv_heads, cfg.head_dim)
        k_cache, v_cache = cache
        o = self.ops.rope_and_paged_attention(q, k, v, x.positions, self.cos_sin, k_cache, v_cache,
                                              x.slot_mapping, x.block_tables, x.context_lens,
                                              x.cu_seqlens_q, x.max_seqlen_q, self.scale,
                                              max_context_len=x.max_context_len,
                                              num_splits=x.num_kv_splits, tile_seqs=tile_seqs,
                                              merge_counters=self.merge_counters)
        return self.ops.linear(o.reshape(T, self.q_size), self.w[f"{i}.o"]), residual
