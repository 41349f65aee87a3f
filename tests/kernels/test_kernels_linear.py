"""small_linear (few-row linear layers, plain and SwiGLU-gated): Triton vs torch.

Fresh random inputs every run; outputs NaN-poisoned (conftest), so an unwritten element fails.
"""

from __future__ import annotations

import pytest
import torch

from kernel_testing import DEVICE, SMALL_DTYPES, TOL, check_close
from kernels import reference as ref_ops


def _linear():
    from kernels import linear
    return linear


_dtype_ids = lambda d: str(d).split(".")[-1]  # noqa: E731

# (M, N, K): one row, odd row counts, N and K not multiples of the blocks, the 16-row maximum.
SHAPES = [(1, 64, 128), (3, 80, 200), (16, 96, 256), (7, 33, 72)]
CONFIGS = [dict(block_n=16, block_k=64, split_k=1), dict(block_n=32, block_k=32, split_k=3),
           dict(block_n=16, block_k=64, split_k=8)]


@pytest.mark.parametrize("dtype", SMALL_DTYPES, ids=_dtype_ids)
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"bn{c['block_n']}_bk{c['block_k']}_s{c['split_k']}")
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
def test_small_linear(dtype, m, n, k, cfg, gated):
    """Plain: x @ w.T. Gated: w stacks gate over up, the result is silu_and_mul of the product."""
    lin = _linear()
    x = torch.randn(m, k, dtype=dtype, device=DEVICE)
    w = torch.randn(2 * n if gated else n, k, dtype=dtype, device=DEVICE) / k ** 0.5
    out = lin.small_linear(x, w, lin.LinearConfig(num_stages=2, **cfg), gated=gated)
    full = x.double() @ w.double().T
    ref = (ref_ops.silu_and_mul(full.float()) if gated else full).to(dtype)
    check_close(f"small_linear {m}x{n}x{k} {cfg} gated={gated}", out, ref, TOL[dtype])


def test_small_linear_rejects_too_many_rows():
    lin = _linear()
    x = torch.randn(17, 32, device=DEVICE)
    with pytest.raises(AssertionError, match="at most 16 rows"):
        lin.small_linear(x, torch.randn(16, 32, device=DEVICE))


def test_small_linear_split_sum_is_deterministic():
    """Split-K partials are summed in a fixed order: the same input gives the same bits."""
    lin = _linear()
    x = torch.randn(2, 512, device=DEVICE)
    w = torch.randn(64, 512, device=DEVICE)
    cfg = lin.LinearConfig(block_n=16, block_k=64, split_k=4, num_stages=2)
    first = lin.small_linear(x, w, cfg)
    assert all(torch.equal(first, lin.small_linear(x, w, cfg)) for _ in range(3))


@pytest.mark.parametrize("rows", [1, 16, 17])
@pytest.mark.parametrize("gated", [False, True])
def test_linear_op_matches_reference(rows, gated):
    """The model's linear op: our kernel up to 16 rows, torch above; the same result either way,
    written into `out` when given."""
    from kernels import triton_ops
    x = torch.randn(rows, 256, device=DEVICE)
    w = torch.randn(192, 256, device=DEVICE) / 16
    ref = ref_ops.linear(x, w, gated=gated)
    check_close(f"linear rows={rows} gated={gated}", triton_ops.linear(x, w, gated=gated), ref, TOL[torch.float32])
    if not gated:
        out = torch.full((rows, 192), float("nan"), device=DEVICE)
        assert triton_ops.linear(x, w, out=out) is out
        check_close("linear into out", out, ref, TOL[torch.float32])
