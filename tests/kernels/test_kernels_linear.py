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


# (N, K): K a power of two or not (the slice is padded to the next one), N not a multiple of the
# tile, and a K so long that a program holds a single row.
ONE_ROW_SHAPES = [(64, 128), (100, 200), (33, 1000), (5, 12000)]


@pytest.mark.parametrize("dtype", SMALL_DTYPES, ids=_dtype_ids)
@pytest.mark.parametrize("n,k", ONE_ROW_SHAPES)
def test_one_row_linear(dtype, n, k):
    """One row, each program holding its whole weight slice: x @ w.T, also into `out`."""
    lin = _linear()
    x = torch.randn(1, k, dtype=dtype, device=DEVICE)
    w = torch.randn(n, k, dtype=dtype, device=DEVICE) / k ** 0.5
    block_n = lin.one_row_tile(n, k, w.element_size())
    padded_k = 1 << (k - 1).bit_length()
    assert block_n is not None and block_n * padded_k * w.element_size() <= lin.ONE_ROW_SLICE_BYTES
    ref = (x.double() @ w.double().T).to(dtype)
    check_close(f"one_row_linear {n}x{k}", lin.one_row_linear(x, w, block_n), ref, TOL[dtype])
    # A tile smaller than the largest that fits: more programs, the same result.
    check_close(f"one_row_linear {n}x{k} narrow", lin.one_row_linear(x, w, max(1, block_n // 4)), ref, TOL[dtype])
    out = torch.full((1, n), float("nan"), dtype=dtype, device=DEVICE)
    assert lin.one_row_linear(x, w, block_n, out=out) is out
    check_close("one_row_linear into out", out, ref, TOL[dtype])


def test_one_row_tile_takes_only_weights_one_wave_holds():
    """The 1B model's qkv and o projections (bf16, K = 2048) fit one wave of 64 KB slices on 132
    SMs; its gate_up, down and the 8B projections do not, and take small_linear."""
    lin = _linear()
    assert lin.one_row_tile(3072, 2048, 2) == 16   # 192 programs <= 2 per SM
    assert lin.one_row_tile(2048, 2048, 2) == 16
    assert lin.one_row_tile(2048, 8192, 2) is None   # down: 512 programs of 4 rows
    assert lin.one_row_tile(6144, 4096, 2) is None   # 8B qkv: 768 programs of 8 rows
    assert lin.one_row_tile(16, 2 ** 16, 2) is None  # one row of K is more than a slice


def test_linear_op_one_row_path_matches_small_linear(monkeypatch):
    """linear() sends a single row to one_row_linear where the weight fits, and the result agrees
    with small_linear's on the same input."""
    lin = _linear()
    x = torch.randn(1, 256, device=DEVICE)
    w = torch.randn(96, 256, device=DEVICE) / 16
    calls = []
    real = lin.one_row_linear
    monkeypatch.setattr(lin, "one_row_linear", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    got = lin.linear(x, w)
    assert calls, "a one-row linear over a small weight should take one_row_linear"
    check_close("one_row vs small_linear", got, lin.small_linear(x, w), TOL[torch.float32])
