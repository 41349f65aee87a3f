"""qkv_rope_write_kv: the attention block's projection + RoPE + KV-cache write, Triton vs reference.

Fresh random inputs every run; outputs NaN-poisoned (conftest), so an unwritten element fails. The
fused kernel rotates the fp32 accumulators before rounding while the reference rounds the
projection first, so both are compared with a float64 reference of the same math.
"""

from __future__ import annotations

import pytest
import torch

from kernel_testing import DEVICE, SMALL_DTYPES, TOL, check_close, gpu_only, rope_cache
from kernels import reference as ref_ops

_dtype_ids = lambda d: str(d).split(".")[-1]  # noqa: E731


def _inputs(rows, hq, hkv, d, k, page, dtype, max_pos=300):
    x = torch.randn(rows, k, dtype=dtype, device=DEVICE)
    w = torch.randn((hq + 2 * hkv) * d, k, dtype=dtype, device=DEVICE) / k ** 0.5
    positions = torch.randint(0, max_pos, (rows,), device=DEVICE)
    num_blocks = rows // page + 3
    slots = torch.randperm(num_blocks * page, device=DEVICE)[:rows]
    if rows > 1:
        slots[torch.randperm(rows, device=DEVICE)[: max(1, rows // 4)]] = -1   # padding rows
    k_cache = torch.randn(num_blocks, page, hkv, d, dtype=dtype, device=DEVICE)
    v_cache = torch.randn_like(k_cache)
    return x, w, positions, rope_cache(max_pos, d), k_cache, v_cache, slots.to(torch.int64)


def _expected(x, w, hq, hkv, positions, cs, k_cache, v_cache, slots):
    """float64 reference -> (q, k_cache, v_cache) in the inputs' dtype."""
    kc, vc = k_cache.double(), v_cache.double()
    q = ref_ops.qkv_rope_write_kv(x.double(), w.double(), hq, hkv, positions, cs.double(), kc, vc, slots)
    return q.to(x.dtype), kc.to(x.dtype), vc.to(x.dtype)


@pytest.mark.parametrize("dtype", SMALL_DTYPES, ids=_dtype_ids)
@pytest.mark.parametrize("rows,hq,hkv,d,k,page", [
    (1, 4, 2, 64, 256, 16),     # one decode row, K one tile
    (5, 6, 3, 128, 200, 4),     # K not a multiple of the tile, GQA 2, head dim 128
    (16, 2, 1, 32, 600, 16),    # the 16-row maximum, one pair group per head, K over 3 tiles
    (3, 8, 8, 64, 96, 8),       # no GQA
])
def test_fused_kernel_matches_reference(dtype, rows, hq, hkv, d, k, page):
    from kernels.qkv_rope import fused_qkv_rope
    x, w, positions, cs, k_cache, v_cache, slots = _inputs(rows, hq, hkv, d, k, page, dtype)
    q_exp, kc_exp, vc_exp = _expected(x, w, hq, hkv, positions, cs, k_cache, v_cache, slots)
    q = fused_qkv_rope(x, w, hq, hkv, positions, cs, k_cache, v_cache, slots)
    check_close("fused qkv_rope q", q, q_exp, TOL[dtype])
    # whole caches: the written slots match, every other slot is untouched
    check_close("fused qkv_rope k_cache", k_cache, kc_exp, TOL[dtype])
    check_close("fused qkv_rope v_cache", v_cache, vc_exp, TOL[dtype])
    untouched = torch.ones(k_cache.shape[0] * k_cache.shape[1], dtype=torch.bool, device=DEVICE)
    untouched[slots[slots >= 0]] = False
    assert torch.equal(k_cache.view(-1, hkv, d)[untouched], kc_exp.view(-1, hkv, d)[untouched])


@pytest.mark.parametrize("fused_on", [True, False], ids=["fused_on", "fused_off"])
@pytest.mark.parametrize("rows", [1, 16, 17])   # 17: above the fused kernel's rows, two kernels
def test_op_matches_reference(rows, fused_on, monkeypatch):
    """The model's op, either path (LLM_FUSED_QKV_ROPE on or off), against the reference op on
    the same float32 inputs."""
    from kernels import qkv_rope, triton_ops
    monkeypatch.setattr(qkv_rope, "_fused_on", lambda: fused_on)
    hq, hkv, d = 4, 2, 64
    x, w, positions, cs, k_cache, v_cache, slots = _inputs(rows, hq, hkv, d, 192, 16, torch.float32)
    kc_ref, vc_ref = k_cache.clone(), v_cache.clone()
    q = triton_ops.qkv_rope_write_kv(x, w, hq, hkv, positions, cs, k_cache, v_cache, slots)
    q_ref = ref_ops.qkv_rope_write_kv(x, w, hq, hkv, positions, cs, kc_ref, vc_ref, slots)
    check_close(f"qkv_rope_write_kv rows={rows} q", q, q_ref, TOL[torch.float32])
    check_close(f"qkv_rope_write_kv rows={rows} k_cache", k_cache, kc_ref, TOL[torch.float32])
    check_close(f"qkv_rope_write_kv rows={rows} v_cache", v_cache, vc_ref, TOL[torch.float32])


def test_fused_kernel_rejects_head_dims_it_cannot_pair():
    from kernels.qkv_rope import fused_qkv_rope
    x, w, positions, cs, k_cache, v_cache, slots = _inputs(1, 2, 1, 16, 64, 16, torch.float32)
    with pytest.raises(AssertionError, match="multiple of 32"):
        fused_qkv_rope(x, w, 2, 1, positions, cs, k_cache, v_cache, slots)


@gpu_only
@pytest.mark.parametrize("rows", [1, 16])
@pytest.mark.parametrize("hq,hkv,d,k", [(32, 8, 64, 2048), (32, 8, 128, 4096)], ids=["1b", "8b"])
def test_fused_kernel_at_model_shapes(rows, hq, hkv, d, k):
    """The Llama-3.2-1B and Llama-3-8B projections in bf16, with a 16-token page cache."""
    from kernels.qkv_rope import fused_qkv_rope
    x, w, positions, cs, k_cache, v_cache, slots = _inputs(rows, hq, hkv, d, k, 16, torch.bfloat16)
    q_exp, kc_exp, vc_exp = _expected(x, w, hq, hkv, positions, cs, k_cache, v_cache, slots)
    q = fused_qkv_rope(x, w, hq, hkv, positions, cs, k_cache, v_cache, slots)
    check_close("fused qkv_rope q", q, q_exp, TOL[torch.bfloat16])
    check_close("fused qkv_rope k_cache", k_cache, kc_exp, TOL[torch.bfloat16])
    check_close("fused qkv_rope v_cache", v_cache, vc_exp, TOL[torch.bfloat16])
