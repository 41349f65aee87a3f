"""RMSNorm, RoPE (+ KV write) and SiLU-and-mul: Triton vs reference.

Fresh random inputs every run; outputs NaN-poisoned (conftest).
"""

from __future__ import annotations

import pytest
import torch

from kernel_testing import DEVICE, SMALL_DTYPES, TOL, check_close, gpu_only, rope_cache
from kernels import reference as ref_ops


def _ops():
    from kernels import triton_ops
    return triton_ops


_dtype_ids = lambda d: str(d).split(".")[-1]  # noqa: E731


# --------------------------------------------------------------------------
# RMSNorm
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", SMALL_DTYPES, ids=_dtype_ids)
@pytest.mark.parametrize("rows,hidden", [(1, 64), (7, 100), (33, 256)])
def test_rms_norm(dtype, rows, hidden):
    x = torch.randn(rows, hidden, dtype=dtype, device=DEVICE) * 3
    w = torch.randn(hidden, dtype=dtype, device=DEVICE)
    eps = 1e-6
    check_close(f"rms_norm {rows}x{hidden} {dtype}", _ops().rms_norm(x, w, eps),
                ref_ops.rms_norm(x, w, eps), TOL[dtype])


@pytest.mark.parametrize("dtype", SMALL_DTYPES, ids=_dtype_ids)
@pytest.mark.parametrize("rows,hidden", [(1, 64), (7, 100), (33, 256)])
def test_fused_add_rms_norm(dtype, rows, hidden):
    x = torch.randn(rows, hidden, dtype=dtype, device=DEVICE)
    res = torch.randn(rows, hidden, dtype=dtype, device=DEVICE)
    w = torch.randn(hidden, dtype=dtype, device=DEVICE)
    x0, res0 = x.clone(), res.clone()
    out, res_out = _ops().fused_add_rms_norm(x, res, w, 1e-5)
    ref_out, ref_res = ref_ops.fused_add_rms_norm(x, res, w, 1e-5)
    check_close("fused_add_rms_norm out", out, ref_out, TOL[dtype])
    check_close("fused_add_rms_norm residual", res_out, ref_res, TOL[dtype])
    assert torch.equal(x, x0) and torch.equal(res, res0), "inputs must not be modified"


# --------------------------------------------------------------------------
# RoPE
# --------------------------------------------------------------------------

def _rope_inputs(tokens, hq, hkv, d, dtype, max_pos=512):
    # q, k, v as strided views of one packed qkv projection (the engine's layout)
    qkv = torch.randn(tokens, hq + 2 * hkv, d, dtype=dtype, device=DEVICE)
    q, k, v = qkv[:, :hq], qkv[:, hq:hq + hkv], qkv[:, hq + hkv:]
    positions = torch.randint(0, max_pos, (tokens,), device=DEVICE)
    return q, k, v, positions, rope_cache(max_pos, d)


@pytest.mark.parametrize("dtype", SMALL_DTYPES, ids=_dtype_ids)
@pytest.mark.parametrize("tokens,hq,hkv,d", [(1, 2, 1, 64), (9, 4, 2, 64), (5, 6, 3, 128), (300, 2, 1, 64)])
def test_apply_rope(dtype, tokens, hq, hkv, d):
    q, k, _, positions, cs = _rope_inputs(tokens, hq, hkv, d, dtype)
    q_rot, k_rot = _ops().apply_rope(q, k, positions, cs)
    q_ref, k_ref = ref_ops.apply_rope(q, k, positions, cs)
    check_close("apply_rope q", q_rot, q_ref, TOL[dtype])
    check_close("apply_rope k", k_rot, k_ref, TOL[dtype])


@pytest.mark.parametrize("dtype", SMALL_DTYPES, ids=_dtype_ids)
@pytest.mark.parametrize("tokens,hq,hkv,d,page", [(1, 2, 1, 64, 16), (11, 4, 2, 64, 4), (6, 6, 3, 128, 16),
                                                  (300, 2, 1, 64, 16)])   # > EARLY_READS_MAX_TOKENS
def test_rope_and_write_kv(dtype, tokens, hq, hkv, d, page):
    q, k, v, positions, cs = _rope_inputs(tokens, hq, hkv, d, dtype)
    num_blocks = tokens // page + 3
    slots = torch.randperm(num_blocks * page, device=DEVICE)[:tokens]
    if tokens > 1:
        slots[torch.randint(0, tokens, (max(1, tokens // 4),))] = -1  # padding tokens
    slot_mapping = slots.to(torch.int64)
    k_cache = torch.randn(num_blocks, page, hkv, d, dtype=dtype, device=DEVICE)
    v_cache = torch.randn_like(k_cache)
    k_cache_ref, v_cache_ref = k_cache.clone(), v_cache.clone()

    q_rot, k_rot = _ops().rope_and_write_kv(q, k, v, positions, cs, k_cache, v_cache, slot_mapping)
    q_ref, k_ref = ref_ops.rope_and_write_kv(q, k, v, positions, cs, k_cache_ref, v_cache_ref,
                                             slot_mapping)
    check_close("rope_write q", q_rot, q_ref, TOL[dtype])
    check_close("rope_write k", k_rot, k_ref, TOL[dtype])
    # whole caches: written slots match, every other slot untouched
    check_close("rope_write k_cache", k_cache, k_cache_ref, TOL[dtype])
    check_close("rope_write v_cache", v_cache, v_cache_ref, TOL[dtype])
    written = slot_mapping[slot_mapping >= 0]
    flat_v = v_cache.view(-1, hkv, d)
    assert torch.equal(flat_v[written], v[slot_mapping >= 0]), "v must be copied exactly"


# --------------------------------------------------------------------------
# SiLU and mul
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", SMALL_DTYPES, ids=_dtype_ids)
@pytest.mark.parametrize("rows,inter", [(1, 16), (5, 48), (16, 1500)])
def test_silu_and_mul(dtype, rows, inter):
    x = torch.randn(rows, 2 * inter, dtype=dtype, device=DEVICE) * 4
    check_close(f"silu_and_mul {rows}x{inter}", _ops().silu_and_mul(x),
                ref_ops.silu_and_mul(x), TOL[dtype])


# --------------------------------------------------------------------------
# Real shapes on the GPU
# --------------------------------------------------------------------------

@gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=_dtype_ids)
def test_gpu_elementwise_real_shapes(dtype):
    tokens, hidden, inter = 8192, 4096, 4096
    x = torch.randn(tokens, hidden, dtype=dtype, device=DEVICE)
    res = torch.randn_like(x)
    w = torch.randn(hidden, dtype=dtype, device=DEVICE)
    check_close("gpu rms_norm", _ops().rms_norm(x, w, 1e-6), ref_ops.rms_norm(x, w, 1e-6), TOL[dtype])
    out, r = _ops().fused_add_rms_norm(x, res, w, 1e-6)
    ref_out, ref_r = ref_ops.fused_add_rms_norm(x, res, w, 1e-6)
    check_close("gpu fused_add_rms_norm", out, ref_out, TOL[dtype])
    check_close("gpu fused_add_rms_norm residual", r, ref_r, TOL[dtype])
    g = torch.randn(tokens, 2 * inter, dtype=dtype, device=DEVICE)
    check_close("gpu silu_and_mul", _ops().silu_and_mul(g), ref_ops.silu_and_mul(g), TOL[dtype])

    q, k, v, positions, cs = _rope_inputs(tokens, 32, 8, 128, dtype, max_pos=8192)
    k_cache = torch.randn(tokens // 16 + 4, 16, 8, 128, dtype=dtype, device=DEVICE)
    v_cache = torch.randn_like(k_cache)
    kc_ref, vc_ref = k_cache.clone(), v_cache.clone()
    slots = torch.randperm(k_cache.shape[0] * 16, device=DEVICE)[:tokens]
    got = _ops().rope_and_write_kv(q, k, v, positions, cs, k_cache, v_cache, slots)
    want = ref_ops.rope_and_write_kv(q, k, v, positions, cs, kc_ref, vc_ref, slots)
    check_close("gpu rope q", got[0], want[0], TOL[dtype])
    check_close("gpu rope k", got[1], want[1], TOL[dtype])
    check_close("gpu rope k_cache", k_cache, kc_ref, TOL[dtype])
    check_close("gpu rope v_cache", v_cache, vc_ref, TOL[dtype])


# --------------------------------------------------------------------------
# Greedy token + log-normalizer (the sampler's reductions)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", SMALL_DTYPES, ids=_dtype_ids)
@pytest.mark.parametrize("rows,vocab", [(1, 5000), (3, 1000), (9, 2500), (2, 7)])
def test_argmax_logsumexp(dtype, rows, vocab):
    x = (torch.randn(rows, vocab, device=DEVICE) * 4).to(dtype)
    greedy = torch.full((2 * rows,), float("nan"), dtype=torch.float64, device=DEVICE)
    ids, lse = _ops().argmax_logsumexp(x, greedy_out=greedy)
    ref_ids, ref_lse = ref_ops.argmax_logsumexp(x)
    assert ids.dtype == torch.int64 and torch.equal(ids, ref_ids)
    check_close(f"logsumexp {rows}x{vocab} {dtype}", lse, ref_lse, 1e-5)
    # greedy_out: the tokens, then their log-probabilities under the raw distribution
    assert greedy[:rows].tolist() == ref_ids.tolist()
    want = x.float().gather(1, ref_ids[:, None]).squeeze(1) - ref_lse
    # A log-probability is logit - lse in fp32, so its error is a rounding of lse (up to ~16 here):
    # bounded against lse's size, not its own (a near-certain token's is near 0, where a relative
    # bound failed on a 1-ulp difference about one run in a hundred).
    got = greedy[rows:].float()
    assert torch.isfinite(got).all() and got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-5 * max(1.0, ref_lse.abs().max().item()), (got, want)


def test_argmax_logsumexp_ties_and_blocked_tokens():
    """Ties go to the first index (as torch.argmax), also across chunks; -inf entries (blocked
    tokens) and whole -inf stretches add nothing and make no NaN."""
    x = torch.randn(4, 6000, device=DEVICE)
    x[0, [10, 3000, 5999]] = 50.0          # same max in three chunks: the first wins
    x[1, :4000] = float("-inf")            # many chunks of -inf only
    x[2, 5998] = x[2, 5999] = 40.0
    x[3, 0] = float("-inf")
    ids, lse = _ops().argmax_logsumexp(x)
    ref_ids, ref_lse = ref_ops.argmax_logsumexp(x)
    assert ids.tolist() == ref_ids.tolist() and ids[0].item() == 10 and ids[2].item() == 5998
    check_close("logsumexp with -inf", lse, ref_lse, 1e-5)
