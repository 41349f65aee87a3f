"""The elementwise references against independent float64 formulations,
plus the get_ops dispatch."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernel_testing import check_close, rope_cache
from kernels import reference as ref_ops


def test_rms_norm_reference_float64():
    x = torch.randn(6, 40, dtype=torch.float64)
    w = torch.randn(40, dtype=torch.float64)
    expected = x / torch.sqrt((x * x).sum(-1, keepdim=True) / 40 + 1e-6) * w
    check_close("ref rms_norm", ref_ops.rms_norm(x, w, 1e-6), expected, 1e-12)
    res = torch.randn_like(x)
    out, r = ref_ops.fused_add_rms_norm(x, res, w, 1e-6)
    s = x + res
    check_close("ref fused residual", r, s, 1e-15)
    check_close("ref fused out", out,
                s / torch.sqrt((s * s).sum(-1, keepdim=True) / 40 + 1e-6) * w, 1e-12)


def test_rope_reference_is_complex_rotation():
    """rotate_half RoPE == multiplying (x_i, x_{i+D/2}) as a complex number by e^{i pos f_i}."""
    t, h, d = 5, 3, 32
    x = torch.randn(t, h, d, dtype=torch.float64)
    pos = torch.randint(0, 100, (t,))
    cs = rope_cache(100, d, device="cpu").double()
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.complex(x[..., :d // 2], x[..., d // 2:])
    z = z * torch.polar(torch.ones_like(inv_freq), pos[:, None].double() * inv_freq)[:, None, :]
    expected = torch.cat([z.real, z.imag], dim=-1)
    q_rot, k_rot = ref_ops.apply_rope(x, x[:, :1], pos, cs)
    check_close("ref rope q", q_rot, expected, 1e-6)  # table is stored in fp32
    check_close("ref rope k", k_rot, expected[:, :1], 1e-6)


def test_silu_and_mul_reference_float64():
    x = torch.randn(4, 20, dtype=torch.float64)
    g, u = x[:, :10], x[:, 10:]
    check_close("ref silu", ref_ops.silu_and_mul(x), g * torch.sigmoid(g) * u, 1e-14)


def test_get_ops_dispatch(monkeypatch):
    monkeypatch.delenv("LLM_KERNELS", raising=False)
    assert kernels.get_ops("cpu") is ref_ops
    assert kernels.get_ops(torch.device("cuda", 0)) is kernels.triton_ops
    monkeypatch.setenv("LLM_KERNELS", "triton")
    assert kernels.get_ops("cpu") is kernels.triton_ops
    monkeypatch.setenv("LLM_KERNELS", "reference")
    assert kernels.get_ops("cuda") is ref_ops
    monkeypatch.setenv("LLM_KERNELS", "bogus")
    with pytest.raises(ValueError):
        kernels.get_ops("cpu")


def test_both_sets_have_the_same_api():
    import inspect
    for name in ["paged_attention", "rms_norm", "fused_add_rms_norm", "apply_rope",
                 "rope_and_write_kv", "silu_and_mul", "choose_num_splits"]:
        r = inspect.signature(getattr(ref_ops, name))
        t = inspect.signature(getattr(kernels.triton_ops, name))
        assert list(r.parameters) == list(t.parameters), name
