"""Plain-PyTorch reference implementations of the serving kernels.

These are the ground truth the Triton kernels are tested against, and what
the engine runs on CPU.  They work on any device and any float dtype: math is
done in float32 (float64 inputs stay float64, so tests can compare in double
precision) and results are returned in the input dtype.

Shapes and semantics are documented in kernels/README.md; the Triton versions
in kernels/triton_ops.py have identical signatures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .heuristics import choose_num_splits  # same API on both kernel sets

__all__ = [
    "paged_attention",
    "rope_and_paged_attention",
    "attention_tile_map",
    "rms_norm",
    "fused_add_rms_norm",
    "apply_rope",
    "rope_and_write_kv",
    "silu_and_mul",
    "linear",
    "rms_norm_linear",
    "rms_norm_mlp",
    "argmax_logsumexp",
    "choose_num_splits",
    "decode_attention_block",
    "decode_block_fits",
    "prepare_step_inputs",
]

# Cap on the number of score elements materialised at once by the reference
# attention (per sequence chunk), so long prefills fit in memory.
_MAX_SCORE_ELEMS = 1 << 26


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for all float dtypes except float64, which is kept."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------

def gather_kv(k_cache, v_cache, block_table_row, context_len):
    """Return contiguous K, V [context_len, Hkv, D] of one sequence."""
    block_size = k_cache.shape[1]
    num_blocks = -(-context_len // block_size)
    blocks = block_table_row[:num_blocks].long()
    k = k_cache[blocks].reshape(num_blocks * block_size, *k_cache.shape[2:])
    v = v_cache[blocks].reshape(num_blocks * block_size, *v_cache.shape[2:])
    return k[:context_len], v[:context_len]


def attention_tile_map(cu_seqlens_q, num_tokens, max_seqlen_q, num_q_heads, num_kv_heads,
                       head_dim, dtype):
    """The Triton kernel's per-step tile -> sequence map; the reference needs none."""
    return None


def paged_attention(q, k_cache, v_cache, block_tables, context_lens,
                    cu_seqlens_q, max_seqlen_q, softmax_scale, *,
                    num_splits=None, config=None, max_context_len=None, tile_seqs=None,
                    early_kv_cache=None, merge_counters=None):
    """Causal attention of packed query tokens over a paged KV cache.

    q: [T, Hq, D]; k_cache, v_cache: [num_blocks, block_size, Hkv, D];
    block_tables: int [B, max_blocks_per_seq]; context_lens: int [B] (tokens
    in the cache including this step's); cu_seqlens_q: int [B+1].
    Query token i of sequence b sits at absolute position
    context_lens[b] - qlen_b + i and sees cache positions 0..that position.
    `num_splits` / `config` / `max_context_len` tune the Triton kernel and are
    ignored here, as is `early_kv_cache` (a test hook of the kernel's reads
    before its PDL wait) and `merge_counters` (its scratch for merging splits in the launch).
    Rows of the output past cu_seqlens_q[-1] are zero here; the Triton kernels leave them unwritten.
    """
    del max_seqlen_q, num_splits, config, early_kv_cache, merge_counters  # for the kernel only
    T, Hq, D = q.shape
    Hkv = k_cache.shape[2]
    assert Hq % Hkv == 0, "Hq must be a multiple of Hkv"
    group = Hq // Hkv
    cdt = _compute_dtype(q.dtype)
    out = torch.zeros_like(q)
    cu = cu_seqlens_q.tolist()
    ctx_lens = context_lens.tolist()
    for b in range(len(ctx_lens)):
        q_begin, q_end = cu[b], cu[b + 1]
        qlen = q_end - q_begin
        if qlen == 0:
            continue
        ctx = ctx_lens[b]
        assert ctx >= qlen, "context_lens must include this step's tokens"
        k, v = gather_kv(k_cache, v_cache, block_tables[b], ctx)
        # GQA: query head h reads kv head h // group.
        k = k.to(cdt).repeat_interleave(group, dim=1)  # [ctx, Hq, D]
        v = v.to(cdt).repeat_interleave(group, dim=1)
        qs = q[q_begin:q_end].to(cdt)
        positions = torch.arange(ctx - qlen, ctx, device=q.device)
        key_pos = torch.arange(ctx, device=q.device)
        chunk = max(1, _MAX_SCORE_ELEMS // (Hq * ctx))
        for c0 in range(0, qlen, chunk):
            c1 = min(qlen, c0 + chunk)
            scores = torch.einsum("qhd,khd->hqk", qs[c0:c1], k) * softmax_scale
            hidden = key_pos[None, :] > positions[c0:c1, None]  # future keys
            scores.masked_fill_(hidden[None], float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            o = torch.einsum("hqk,khd->qhd", probs, v)
            out[q_begin + c0:q_begin + c1] = o.to(q.dtype)
    return out


def rope_and_paged_attention(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping,
                             block_tables, context_lens, cu_seqlens_q, max_seqlen_q, softmax_scale, *,
                             num_splits=None, config=None, max_context_len=None, tile_seqs=None,
                             early_kv_cache=None, merge_counters=None):
    """rope_and_write_kv(q, k, v, ...) (k and v into the cache, in place), then paged_attention
    of the rotated q over the cache. The knobs after `*` tune the Triton kernel (merge_counters:
    its scratch for merging splits in the attention launch) and are ignored here."""
    del num_splits, config, tile_seqs, early_kv_cache, merge_counters
    q_rot, _ = rope_and_write_kv(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping)
    return paged_attention(q_rot, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q,
                           max_seqlen_q, softmax_scale, max_context_len=max_context_len)


# --------------------------------------------------------------------------
# RMSNorm
# --------------------------------------------------------------------------

def rms_norm(x, weight, eps):
    """HF Llama RMSNorm: normalise in fp32, cast to x.dtype, times weight.

    The weight is cast to x.dtype, so the output has x's dtype.
    """
    xf = x.to(_compute_dtype(x.dtype))
    variance = xf.pow(2).mean(dim=-1, keepdim=True)
    normed = (xf * torch.rsqrt(variance + eps)).to(x.dtype)
    return normed * weight.to(x.dtype)


def fused_add_rms_norm(x, residual, weight, eps):
    """residual_out = x + residual (in x.dtype); out = rms_norm(residual_out)."""
    residual_out = x + residual
    return rms_norm(residual_out, weight, eps), residual_out


# --------------------------------------------------------------------------
# RoPE
# --------------------------------------------------------------------------

def _rotate(x, cos, sin):
    """Neox / HF rotate_half rotation of x [T, H, D] with cos, sin [T, D/2]."""
    cdt = _compute_dtype(x.dtype)
    half = x.shape[-1] // 2
    xf = x.to(cdt)
    x1, x2 = xf[..., :half], xf[..., half:]
    c = cos.to(cdt)[:, None, :]
    s = sin.to(cdt)[:, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def apply_rope(q, k, positions, cos_sin_cache):
    """Rotate q [T, Hq, D] and k [T, Hkv, D] by their token positions.

    cos_sin_cache: [max_positions, D]; [:, :D/2] is cos, [:, D/2:] is sin.
    """
    half = q.shape[-1] // 2
    assert cos_sin_cache.shape[-1] == 2 * half, "rotary dim must equal head dim"
    cs = cos_sin_cache[positions.long()]
    cos, sin = cs[:, :half], cs[:, half:]
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


def rope_and_write_kv(q, k, v, positions, cos_sin_cache, k_cache, v_cache,
                      slot_mapping):
    """apply_rope, then store rotated k and v at flat cache slots (in place).

    slot = block * block_size + offset; slot -1 skips the token (padding).
    Returns (q_rot, k_rot).
    """
    q_rot, k_rot = apply_rope(q, k, positions, cos_sin_cache)
    block_size = k_cache.shape[1]
    slots = slot_mapping.long()
    keep = slots >= 0
    slots = slots[keep]
    blocks, offsets = slots // block_size, slots % block_size
    k_cache[blocks, offsets] = k_rot[keep].to(k_cache.dtype)
    v_cache[blocks, offsets] = v[keep].to(v_cache.dtype)
    return q_rot, k_rot


def decode_attention_block(h, residual, norm_w, qkv_w, o_w, eps, positions, cos_sin_cache,
                           k_cache, v_cache, slot_mapping, block_tables, context_lens, softmax_scale,
                           *, max_context_len=None, fused=None, num_splits=None):
    """The attention half of a layer for one sequence's one decode token: (fused add +) RMSNorm,
    qkv projection, RoPE + K/V write, attention over the paged cache, o projection.
    Returns (o projection [1, hidden], residual_out = h + residual, or h when residual is None).
    The knobs after `*` tune the Triton kernel (kernels/decode_block.py) and are ignored here."""
    del max_context_len, fused, num_splits
    if residual is None:
        x, residual_out = rms_norm(h, norm_w, eps), h
    else:
        x, residual_out = fused_add_rms_norm(h, residual, norm_w, eps)
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    q_size = o_w.shape[1]
    kv_size = num_kv_heads * head_dim
    q, k, v = linear(x, qkv_w).split([q_size, kv_size, kv_size], dim=-1)
    q, _ = rope_and_write_kv(q.view(1, -1, head_dim), k.view(1, -1, head_dim), v.view(1, -1, head_dim),
                             positions, cos_sin_cache, k_cache, v_cache, slot_mapping)
    cu_seqlens_q = torch.tensor([0, 1], dtype=torch.int32, device=h.device)
    o = paged_attention(q, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q, 1, softmax_scale)
    return linear(o.reshape(1, q_size), o_w), residual_out


def decode_block_fits(hidden, num_q_heads, num_kv_heads, head_dim, dtype, device):
    """The reference runs a layer's ops one by one (the same computation): never the block."""
    return False


def prepare_step_inputs(input_ids, cu_seqlens, context_lens, fill_src, feedback, table_width, tables_in,
                        tables_out, context_lens_out, cu_seqlens_out):
    """A step's inputs made ready (kernels/step_inputs.py says what each argument holds): tokens
    of sequences with fill_src >= 0 read from `feedback`, int32 copies of context_lens and
    cu_seqlens, the table_width-wide block tables copied into tables_out."""
    S = context_lens.shape[0]
    fill = fill_src >= 0
    input_ids[cu_seqlens[:S][fill]] = feedback[fill_src[fill]]
    context_lens_out[:S].copy_(context_lens)
    cu_seqlens_out[:S + 1].copy_(cu_seqlens)
    width = int(table_width[0])
    tables_out[:S, :width] = tables_in[:S * width].view(S, width)


# --------------------------------------------------------------------------
# SiLU and mul
# --------------------------------------------------------------------------

def silu_and_mul(x):
    """x [T, 2I] -> silu(x[:, :I]) * x[:, I:], computed in fp32."""
    inter = x.shape[-1] // 2
    xf = x.to(_compute_dtype(x.dtype))
    return (F.silu(xf[..., :inter]) * xf[..., inter:]).to(x.dtype)


def rms_norm_linear(x, residual, norm_w, eps, w, gated=False):
    """linear(RMSNorm(x + residual) * norm_w, w, gated) and the new residual x + residual (x
    itself when residual is None): a norm and the projection after it."""
    if residual is None:
        h, residual = rms_norm(x, norm_w, eps), x
    else:
        h, residual = fused_add_rms_norm(x, residual, norm_w, eps)
    return linear(h, w, gated=gated), residual


def rms_norm_mlp(x, residual, norm_w, eps, gate_up, down, keep_split=False):
    """The MLP half of a layer: (down projection of silu_and_mul(RMSNorm(x + residual) * norm_w
    @ gate_up.T), the new residual). keep_split as in linear."""
    h, residual = rms_norm_linear(x, residual, norm_w, eps, gate_up, gated=True)
    return linear(h, down, keep_split=keep_split), residual


def linear(x, w, gated=False, out=None, keep_split=False):
    """x [T, K] @ w [N, K].T in x's dtype (torch's matmul: cuBLAS on a GPU).

    gated: w stacks gate [I, K] over up [I, K] and the result is silu_and_mul of the product.
    out: write the (non-gated) result there. keep_split: lets the Triton kernel hand a split-K
    product to rms_norm_linear unsummed; ignored here.
    """
    del keep_split
    if gated:
        assert out is None, "the gated form returns a new tensor"
        return silu_and_mul(F.linear(x, w))
    if out is None:
        return F.linear(x, w)
    return torch.mm(x, w.t(), out=out)


def argmax_logsumexp(logits, greedy_out=None, ids_out=None, host_addr=None):
    """logits [S, V] -> (argmax [S] int64, first index on ties; logsumexp [S] float32).
    greedy_out (float64 [2S]), when given, also gets every row's argmax then its log-probability.
    ids_out (int64 [S]): where the argmax goes (then returned). host_addr: the Triton version's
    write of greedy_out to host memory, for CUDA graphs; there are none on the CPU."""
    assert host_addr is None, "host_addr is for CUDA graphs (kernels.sampling)"
    x = logits.float()
    ids, lse = x.argmax(dim=-1), torch.logsumexp(x, dim=-1)
    if ids_out is not None:
        ids = ids_out.copy_(ids)
    if greedy_out is not None:
        n = ids.numel()
        greedy_out[:n] = ids.double()
        greedy_out[n:] = (x.max(dim=-1).values - lse).double()
    return ids, lse
