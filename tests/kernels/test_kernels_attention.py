"""Paged attention: reference vs SDPA, Triton kernel vs reference.

Every test draws fresh random inputs (no fixed seed) and prints its relative
error; outputs are NaN-poisoned (conftest) so unwritten rows fail.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from kernel_testing import (ATTN_TOL, DEVICE, ON_GPU, SMALL_DTYPES, check_close,
                            gpu_only, make_attention_inputs)
from kernels import reference as ref_ops
from kernels.heuristics import (MAX_SPLITS, MIN_TOKENS_PER_SPLIT, PREFILL_MAX_SPLITS,
                                PREFILL_MIN_TOKENS_PER_SPLIT, choose_num_splits, choose_prefill_splits)

# name: (qlens, context_lens, Hq, Hkv, head_dim, page_size)
SCENARIOS = {
    # ragged mixed batch: prefill, one-token prompt, zero-length query,
    # cached prefix, decode, prefill longer than one tile
    "mixed_gqa2_d64": ([5, 1, 0, 3, 1, 17], [5, 1, 7, 20, 33, 17], 4, 2, 64, 16),
    # decode batch, contexts around page boundaries, MHA, D=128
    "decode_mha_d128": ([1, 1, 1, 1, 1], [1, 15, 16, 17, 70], 2, 2, 128, 16),
    # GQA group of 3 (not a power of 2), page smaller than the KV tile
    "prefill_gqa3_d64": ([7, 23], [7, 23], 6, 2, 64, 8),
    # chunked prefill: query chunk after a long cached prefix, group of 4
    "chunked_prefill_gqa4": ([13, 6], [45, 6], 8, 2, 64, 16),
    # only one-token prompts
    "one_token_prompts": ([1, 1, 1], [1, 1, 1], 4, 1, 64, 16),
}


def _run_triton(inputs, **kw):
    from kernels import triton_ops
    return triton_ops.paged_attention(**inputs, **kw)


def _sdpa_expected(inputs):
    """Per-sequence SDPA on gathered contiguous K/V with an explicit mask."""
    q = inputs["q"]
    out = torch.zeros_like(q)
    cu = inputs["cu_seqlens_q"].tolist()
    for b, ctx in enumerate(inputs["context_lens"].tolist()):
        qlen = cu[b + 1] - cu[b]
        if qlen == 0:
            continue
        k, v = ref_ops.gather_kv(inputs["k_cache"], inputs["v_cache"],
                                 inputs["block_tables"][b], ctx)
        q_pos = torch.arange(ctx - qlen, ctx, device=q.device)
        allowed = torch.arange(ctx, device=q.device)[None, :] <= q_pos[:, None]
        o = F.scaled_dot_product_attention(
            q[cu[b]:cu[b + 1]].transpose(0, 1),  # [Hq, qlen, D]
            k.transpose(0, 1), v.transpose(0, 1),  # [Hkv, ctx, D]
            attn_mask=allowed, scale=inputs["softmax_scale"], enable_gqa=True)
        out[cu[b]:cu[b + 1]] = o.transpose(0, 1)
    return out


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_reference_matches_sdpa_float64(scenario):
    qlens, ctxs, hq, hkv, d, page = SCENARIOS[scenario]
    inputs = make_attention_inputs(qlens, ctxs, hq, hkv, d, page, torch.float64, device="cpu")
    got = ref_ops.paged_attention(**inputs)
    check_close(f"reference vs sdpa [{scenario}]", got, _sdpa_expected(inputs), 1e-12)


def test_reference_mask_is_causal():
    """Changing a future key must not change earlier queries' outputs."""
    inputs = make_attention_inputs([6], [10], 2, 1, 16, 4, torch.float64, device="cpu")
    before = ref_ops.paged_attention(**inputs)
    # position 9 is the last cache token: only the last query (position 9) sees it
    page = inputs["block_tables"][0, 9 // 4].long()
    inputs["v_cache"][page, 9 % 4] += 100.0
    after = ref_ops.paged_attention(**inputs)
    assert torch.equal(before[:5], after[:5])
    assert not torch.allclose(before[5], after[5])


@pytest.mark.parametrize("num_splits", [1, 4, None], ids=["nosplit", "split4", "auto"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_paged_attention_matches_reference(scenario, num_splits):
    qlens, ctxs, hq, hkv, d, page = SCENARIOS[scenario]
    inputs = make_attention_inputs(qlens, ctxs, hq, hkv, d, page, torch.float32)
    out = _run_triton(inputs, num_splits=num_splits)
    check_close(f"triton vs ref [{scenario}, splits={num_splits}]",
                out, ref_ops.paged_attention(**inputs), ATTN_TOL[torch.float32])


@pytest.mark.parametrize("dtype", [d for d in SMALL_DTYPES if d != torch.float32],
                         ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_paged_attention_low_precision(dtype, num_splits):
    qlens, ctxs, hq, hkv, d, page = SCENARIOS["mixed_gqa2_d64"]
    inputs = make_attention_inputs(qlens, ctxs, hq, hkv, d, page, dtype)
    out = _run_triton(inputs, num_splits=num_splits)
    check_close(f"triton vs ref [{dtype}, splits={num_splits}]",
                out, ref_ops.paged_attention(**inputs), ATTN_TOL[dtype])


@pytest.mark.parametrize("block_m,block_n,page", [(16, 16, 32), (32, 32, 16), (64, 16, 8), (16, 64, 16)])
def test_paged_attention_tile_configs(block_m, block_n, page):
    """Tiles larger/smaller than pages, several query tiles per sequence."""
    from kernels.attention import AttnConfig
    qlens, ctxs = [19, 1, 0, 7], [19, 50, 3, 40]
    inputs = make_attention_inputs(qlens, ctxs, 4, 2, 64, page, torch.float32)
    cfg = AttnConfig(block_m=block_m, block_n=block_n, num_warps=4, num_stages=2)
    expected = ref_ops.paged_attention(**inputs)
    for splits in (1, 3):
        out = _run_triton(inputs, num_splits=splits, config=cfg)
        check_close(f"triton cfg m{block_m} n{block_n} page{page} splits={splits}",
                    out, expected, ATTN_TOL[torch.float32])


def test_paged_attention_random_table_tail_and_noncontiguous_q():
    """Table entries past the context point at real blocks (must be ignored);
    q is a strided view into a packed qkv projection, as the engine has it."""
    qlens, ctxs, hq, hkv, d = [3, 1, 9], [20, 33, 9], 4, 2, 64
    inputs = make_attention_inputs(qlens, ctxs, hq, hkv, d, 16, torch.float32, table_fill=None)
    qkv = torch.randn(sum(qlens), hq + 2 * hkv, d, dtype=torch.float32, device=DEVICE)
    inputs["q"] = qkv[:, :hq]
    assert not inputs["q"].is_contiguous()
    expected = ref_ops.paged_attention(**inputs)
    for splits in (1, 2):
        check_close(f"triton strided q splits={splits}",
                    _run_triton(inputs, num_splits=splits), expected, ATTN_TOL[torch.float32])


def _pad_like_a_cuda_graph(inputs, extra_tokens, extra_seqs, max_seqlen_q):
    """The shape a captured step has: trailing padding tokens that belong to
    no sequence, padding sequences with no query tokens, and max_seqlen_q an
    upper bound rather than the true maximum."""
    padded = dict(inputs)
    q = inputs["q"]
    padded["q"] = torch.cat([q, torch.randn(extra_tokens, *q.shape[1:], dtype=q.dtype, device=q.device)])
    cu = inputs["cu_seqlens_q"]
    padded["cu_seqlens_q"] = torch.cat([cu, cu[-1:].repeat(extra_seqs)])
    padded["context_lens"] = torch.cat([inputs["context_lens"],
                                        torch.zeros(extra_seqs, dtype=torch.int32, device=cu.device)])
    bt = inputs["block_tables"]
    padded["block_tables"] = torch.cat([bt, torch.zeros(extra_seqs, bt.shape[1], dtype=bt.dtype,
                                                        device=bt.device)])
    padded["max_seqlen_q"] = max_seqlen_q
    return padded


@pytest.mark.parametrize("splits", [1, 3])
def test_mixed_step_sequences_on_both_sides_of_the_decode_tile(splits):
    """A mixed step runs two launches: sequences of at most one decode tile's query tokens (4
    with GQA 4) on the decode grid, longer ones on the flat grid. Query lengths at that boundary
    (4 and 5), single decodes and a long chunk all come out right (the output is NaN-poisoned:
    a sequence neither launch took would fail)."""
    from kernels.attention import default_config
    dec_q = default_config(1, 4, 64, torch.float32).block_m // 4
    qlens = [dec_q, dec_q + 1, 1, 30, 1]
    ctxs = [dec_q + 9, dec_q + 1, 40, 70, 1]
    inputs = make_attention_inputs(qlens, ctxs, 8, 2, 64, 16, torch.float32)
    check_close(f"mixed step qlens={qlens} splits={splits}", _run_triton(inputs, num_splits=splits),
                ref_ops.paged_attention(**inputs), ATTN_TOL[torch.float32])


@pytest.mark.parametrize("splits", [1, 3])
def test_paged_attention_padded_step_matches_unpadded(splits):
    """A padded step (as the engine replays it from a CUDA graph) gives the
    real rows exactly what the unpadded step gives; random ragged lengths
    exercise the flat tile grid's sequence search."""
    n = random.randint(2, 6)
    qlens = [random.choice([0, 1, 1, random.randint(1, 40)]) for _ in range(n)]
    qlens[random.randrange(n)] = random.randint(1, 40)     # at least one real row to compare
    ctxs = [q + random.randint(0, 50) for q in qlens]
    ctxs = [max(c, 1) for c in ctxs]
    inputs = make_attention_inputs(qlens, ctxs, 8, 2, 64, 16, torch.float32)
    t = sum(qlens)
    expected = ref_ops.paged_attention(**inputs)
    padded = _pad_like_a_cuda_graph(inputs, extra_tokens=random.randint(1, 20),
                                    extra_seqs=random.randint(1, 4), max_seqlen_q=t + 24)
    out = _run_triton(padded, num_splits=splits, max_context_len=64 * 16)
    print("qlens", qlens, "ctxs", ctxs)
    check_close(f"padded step splits={splits}", out[:t], expected, ATTN_TOL[torch.float32])
    unpadded = _run_triton(inputs, num_splits=splits)
    check_close(f"unpadded step splits={splits}", unpadded, expected, ATTN_TOL[torch.float32])


def test_attention_tile_map_matches_tile_ownership():
    """Sequence s's tiles start at cu[s] // BQ + s in the flat grid: the map gives every tile the
    last sequence whose first tile is at or before it (what the kernel's binary search found)."""
    from kernels.attention import _block_q, attention_tile_map
    for _ in range(50):
        n = random.randint(1, 9)
        qlens = [random.choice([0, 1, random.randint(1, 70)]) for _ in range(n)]
        cu = torch.tensor([0] + list(torch.tensor(qlens).cumsum(0)), dtype=torch.int32, device=DEVICE)
        tokens = int(cu[-1]) + random.randint(0, 40)          # a padded step has spare tokens
        max_q = max(max(qlens), 1) + random.randint(0, 30)
        hq, hkv, d = random.choice([(8, 2, 64), (4, 4, 128), (6, 2, 64)])
        tiles = attention_tile_map(cu, tokens, max_q, hq, hkv, d, torch.float32)
        bq = _block_q(max_q, 1 << (hq // hkv - 1).bit_length(), d, torch.float32)
        if max_q <= bq:
            assert tiles is None
            continue
        starts = [int(cu[s]) // bq + s for s in range(n)]
        expected = [max(s for s in range(n) if starts[s] <= t) for t in range(tokens // bq + n)]
        assert tiles.tolist() == expected, (qlens, tokens, bq)


@pytest.mark.parametrize("splits", [1, 2])
def test_paged_attention_with_a_shared_tile_map(splits):
    """The model makes the map once per step and hands it to every layer: same output as the
    map the kernel wrapper makes itself, and as the reference."""
    from kernels import triton_ops
    n = random.randint(2, 6)
    qlens = [random.choice([1, random.randint(2, 40)]) for _ in range(n)]
    ctxs = [q + random.randint(0, 40) for q in qlens]
    inputs = make_attention_inputs(qlens, ctxs, 8, 2, 64, 16, torch.float32)
    tiles = triton_ops.attention_tile_map(inputs["cu_seqlens_q"], inputs["q"].shape[0], inputs["max_seqlen_q"],
                                          8, 2, 64, torch.float32)
    expected = ref_ops.paged_attention(**inputs)
    out = _run_triton(inputs, num_splits=splits, tile_seqs=tiles)
    check_close(f"shared tile map splits={splits}", out, expected, ATTN_TOL[torch.float32])
    assert torch.equal(out, _run_triton(inputs, num_splits=splits))


def test_paged_attention_all_sequences_empty():
    inputs = make_attention_inputs([0, 0], [4, 9], 2, 2, 16, 4, torch.float32)
    assert _run_triton(inputs).shape == (0, 2, 16)
    assert ref_ops.paged_attention(**inputs).shape == (0, 2, 16)


def test_prefill_split_heuristic():
    # a 512-token chunk on the 1B shape (16 tiles x 8 KV heads) after a long context: split
    s = choose_prefill_splits(16, 8, 8192)
    assert 1 < s <= PREFILL_MAX_SPLITS
    # enough tiles to fill the GPU, or a short context: no split
    assert choose_prefill_splits(64, 8, 8192) == 1
    assert choose_prefill_splits(16, 8, 2 * PREFILL_MIN_TOKENS_PER_SPLIT - 1) == 1
    # never more splits than the context has PREFILL_MIN_TOKENS_PER_SPLIT chunks
    assert choose_prefill_splits(1, 1, 3 * PREFILL_MIN_TOKENS_PER_SPLIT) == 3


def test_split_heuristic():
    # small batch, long context: split to fill the GPU, within bounds
    s1 = choose_num_splits(1, 8, 4096, 1)
    assert 1 < s1 <= MAX_SPLITS and 4096 // s1 >= MIN_TOKENS_PER_SPLIT
    # big batch already fills the GPU
    assert choose_num_splits(64, 8, 4096, 1) == 1
    # prefill parallelises over query tiles instead
    assert choose_num_splits(1, 8, 4096, 2048) == 1
    # short contexts are not worth splitting
    assert choose_num_splits(1, 8, 2 * MIN_TOKENS_PER_SPLIT - 1, 1) == 1
    # more sequences -> fewer splits
    assert choose_num_splits(4, 8, 4096, 1) <= s1
    assert choose_num_splits(1, 1, 1 << 20, 1) == MAX_SPLITS


# --------------------------------------------------------------------------
# Real shapes, bf16, on the GPU only
# --------------------------------------------------------------------------

def _random_lengths(n, lo, hi):
    return [random.randint(lo, hi) for _ in range(n)]


@gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("hq,hkv,d", [(32, 8, 128), (32, 32, 128), (16, 4, 64)])
def test_gpu_prefill(dtype, hq, hkv, d):
    qlens = _random_lengths(3, 1, 1100)
    inputs = make_attention_inputs(qlens, qlens, hq, hkv, d, 16, dtype)
    check_close(f"gpu prefill {qlens} {hq}/{hkv} d{d}", _run_triton(inputs),
                ref_ops.paged_attention(**inputs), ATTN_TOL[dtype])


@gpu_only
@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("num_splits", [1, None, 16], ids=["nosplit", "auto", "split16"])
def test_gpu_decode(batch, num_splits):
    ctxs = _random_lengths(batch, 1, 4096)
    ctxs[0] = 4096
    inputs = make_attention_inputs([1] * batch, ctxs, 32, 8, 128, 16, torch.bfloat16)
    check_close(f"gpu decode B{batch} splits={num_splits}", _run_triton(inputs, num_splits=num_splits),
                ref_ops.paged_attention(**inputs), ATTN_TOL[torch.bfloat16])


@gpu_only
def test_gpu_mixed_chunked_prefill_and_decode():
    ctxs = _random_lengths(12, 1, 3000)
    qlens = [random.randint(1, c) if i % 3 == 0 else 1 for i, c in enumerate(ctxs)]
    qlens[1] = 0
    inputs = make_attention_inputs(qlens, ctxs, 32, 8, 128, 16, torch.bfloat16)
    expected = ref_ops.paged_attention(**inputs)
    for splits in (1, 4):
        check_close(f"gpu mixed splits={splits}", _run_triton(inputs, num_splits=splits),
                    expected, ATTN_TOL[torch.bfloat16])


@pytest.mark.parametrize("qlens,ctxs", [
    ([1] * 8, [16, 17, 32, 33, 48, 64, 100, 7]),            # one new token at a tile's end, start, inside
    ([1, 2, 3, 4, 2], [32, 33, 50, 64, 18]),                # decode tiles of a few tokens (GQA 4: up to 4)
], ids=["decode", "short_queries"])
def test_split_decode_reads_only_earlier_steps_tokens_before_the_wait(qlens, ctxs):
    """The split decode attention reads its first KV tile before the PDL wait (kernels/pdl.py),
    while the RoPE kernel before it may still be writing this step's K/V: that early read must
    only touch tokens cached by earlier steps. The kernel takes those reads from `early_kv_cache`:
    here a copy of the cache whose slots for this step's tokens hold huge stale values, so any
    early read of them shows in the output. Deterministic, on the CPU interpreter as on the GPU."""
    from kernels.attention import AttnConfig
    hq, hkv, d, page = 8, 2, 64, 16
    dtype = torch.float32 if not ON_GPU else torch.bfloat16
    inputs = make_attention_inputs(qlens, ctxs, hq, hkv, d, page, dtype)
    stale_k, stale_v = inputs["k_cache"].clone(), inputs["v_cache"].clone()
    tables = inputs["block_tables"].long()
    for b, (qlen, ctx) in enumerate(zip(qlens, ctxs)):
        for pos in range(ctx - qlen, ctx):
            slot = tables[b, pos // page] * page + pos % page
            stale_k.view(-1, hkv, d)[slot] = 300.0
            stale_v.view(-1, hkv, d)[slot] = 300.0
    expected = ref_ops.paged_attention(**inputs)
    # 16-token tiles so that tiles end on, just after and just before the new tokens; splits of
    # one tile and of several (the first read early, the rest after the wait).
    for splits in (max(ctxs) // 16, max(ctxs) // 32):
        got = _run_triton(inputs, num_splits=splits, early_kv_cache=(stale_k, stale_v),
                          config=AttnConfig(block_m=16, block_n=16, num_warps=4, num_stages=1))
        check_close(f"split decode, {splits} splits, stale early cache", got, expected, ATTN_TOL[dtype])
