"""small_linear (few-row linear layers, plain and SwiGLU-gated): Triton vs torch.

Fresh random inputs every run; outputs NaN-poisoned (conftest), so an unwritten element fails.
"""

from __future__ import annotations

import pytest
import torch

from kernel_testing import DEVICE, SMALL_DTYPES, TOL, check_close, run_compiled_for_hopper
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


@pytest.mark.parametrize("dtype", SMALL_DTYPES, ids=_dtype_ids)
@pytest.mark.parametrize("n,k,gated,one_row", [(64, 128, False, True), (100, 200, False, True),
                                               (33, 1000, False, True), (100, 200, False, False),
                                               (96, 256, True, False), (33, 72, True, False)],
                         ids=["one_row_64x128", "one_row_100x200", "one_row_33x1000",
                              "small_100x200", "gated_96x256", "gated_33x72"])
@pytest.mark.parametrize("with_residual", [True, False], ids=["residual", "first_layer"])
def test_rms_norm_linear(dtype, n, k, gated, one_row, with_residual, monkeypatch):
    """The norm inside the projection's kernel (one_row_linear's, or small_linear's, plain and
    gated): the output and the new residual as the reference's (norm, then linear) -- the
    residual bit for bit, the product within rounding."""
    lin = _linear()
    monkeypatch.setattr(lin, "_norm_linear_on", lambda: True)   # LLM_NORM_LINEAR=1 (off by default)
    if not one_row:   # the one-row kernel switched off: small_linear takes the single row
        monkeypatch.setattr(lin, "_one_row_on", lambda: False)
    x = torch.randn(1, k, dtype=dtype, device=DEVICE)
    residual = torch.randn(1, k, dtype=dtype, device=DEVICE) if with_residual else None
    norm_w = (1 + 0.1 * torch.randn(k, device=DEVICE)).to(dtype)
    w = torch.randn(2 * n if gated else n, k, dtype=dtype, device=DEVICE) / k ** 0.5
    calls = []
    real = lin.small_linear
    monkeypatch.setattr(lin, "small_linear", lambda *a, **kw: calls.append(kw.get("norm")) or real(*a, **kw))
    got, got_res = lin.rms_norm_linear(x, residual, norm_w, 1e-5, w, gated=gated)
    assert (calls == []) == one_row and all(c is not None for c in calls), calls
    exp, exp_res = ref_ops.rms_norm_linear(x, residual, norm_w, 1e-5, w, gated=gated)
    check_close(f"rms_norm_linear {n}x{k} gated={gated}", got, exp, TOL[dtype])
    assert torch.equal(got_res, exp_res), "the new residual must be x + residual exactly"
    # Two rows take the norm kernel and the linear: the same results.
    x2 = torch.randn(2, k, dtype=dtype, device=DEVICE)
    r2 = torch.randn(2, k, dtype=dtype, device=DEVICE) if with_residual else None
    got2, got2_res = lin.rms_norm_linear(x2, r2, norm_w, 1e-5, w, gated=gated)
    exp2, exp2_res = ref_ops.rms_norm_linear(x2, r2, norm_w, 1e-5, w, gated=gated)
    check_close(f"rms_norm_linear 2 rows {n}x{k} gated={gated}", got2, exp2, TOL[dtype])
    assert torch.equal(got2_res, exp2_res)


def test_rms_norm_linear_off_runs_the_norm_kernel_first(monkeypatch):
    """LLM_NORM_LINEAR unset: the norm kernel, then the linear (small_linear given no norm)."""
    lin = _linear()
    monkeypatch.setattr(lin, "_one_row_on", lambda: False)
    lin._norm_linear_on.cache_clear()
    monkeypatch.delenv("LLM_NORM_LINEAR", raising=False)
    try:
        assert not lin._norm_linear_on()
        calls = []
        real = lin.small_linear
        monkeypatch.setattr(lin, "small_linear", lambda *a, **kw: calls.append(kw.get("norm")) or real(*a, **kw))
        x, r = torch.randn(1, 96, device=DEVICE), torch.randn(1, 96, device=DEVICE)
        norm_w, w = torch.rand(96, device=DEVICE) + 0.5, torch.randn(64, 96, device=DEVICE) / 10
        got, got_res = lin.rms_norm_linear(x, r, norm_w, 1e-6, w, gated=True)
        assert calls == [None], calls
        exp, exp_res = ref_ops.rms_norm_linear(x, r, norm_w, 1e-6, w, gated=True)
        check_close("rms_norm_linear, norm kernel first", got, exp, TOL[torch.float32])
        assert torch.equal(got_res, exp_res)
    finally:
        lin._norm_linear_on.cache_clear()


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


def test_one_row_config_from_the_environment(monkeypatch):
    """LLM_ONE_ROW_CONFIG=warps,slice_kb,programs_per_sm[,maxnreg] sets the one-row launch shape
    and the tile it gives; anything else is refused."""
    lin = _linear()
    try:
        monkeypatch.setenv("LLM_ONE_ROW_CONFIG", "4,32,3,168")
        lin.one_row_config.cache_clear()
        lin.one_row_tile.cache_clear()
        assert lin.one_row_config() == lin.OneRowConfig(slice_bytes=32 * 1024, num_warps=4,
                                                        programs_per_sm=3, maxnreg=168)
        assert lin.one_row_tile(3072, 2048, 2) == 8   # 384 programs <= 3 per SM of 132
        monkeypatch.setenv("LLM_ONE_ROW_CONFIG", "4,32")
        lin.one_row_config.cache_clear()
        with pytest.raises(ValueError, match="LLM_ONE_ROW_CONFIG"):
            lin.one_row_config()
    finally:
        monkeypatch.delenv("LLM_ONE_ROW_CONFIG", raising=False)
        lin.one_row_config.cache_clear()
        lin.one_row_tile.cache_clear()
    assert lin.one_row_tile(3072, 2048, 2) == 16


_ONE_ROW_FOR_HOPPER = """
import json, os, subprocess, sys, tempfile, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels import linear
fn = linear._one_row_linear_kernel
out = {}
for norm, splits, at_wait in ((False, 0, True), (False, 0, False), (True, 0, True), (True, 4, True)):
    consts = dict(BLOCK_N=16, BLOCK_K=2048, NORM=norm, HAS_RESIDUAL=norm, X_SPLITS=splits, SIGNAL_AT_WAIT=at_wait,
                  PDL=1)
    signature = {n: "constexpr" if n in consts else "*fp32" if n == "x_ptr" and splits else "*bf16"
                 if n.endswith("_ptr") else "fp32" if n == "eps" else "i32" for n in fn.arg_names}
    # As the JIT specializes the 1B qkv launch: pointers, N, K and the row stride divisible by 16.
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if n.endswith("_ptr") or n in ("N", "K", "stride_wn")}
    compiled = triton.compile(ASTSource(fn, signature, consts, attrs), target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=linear.ONE_ROW_WARPS))
    ptx = compiled.asm["ptx"]
    path = os.path.join(tempfile.mkdtemp(), "k.ptx")
    open(path, "w").write(ptx)
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    info = subprocess.run([ptxas, "--gpu-name", "sm_90a", "-v", path, "-o", path + ".cubin"],
                          capture_output=True, text=True).stderr
    regs = int(info.split("Used ")[1].split(" registers")[0])
    lines = ptx.splitlines()
    wait = next(i for i, l in enumerate(lines) if "griddepcontrol.wait" in l)
    early = sum("ld.global" in l for l in lines[:wait])
    out[f"norm={norm}, x_splits={splits}, signal_at_wait={at_wait}"] = dict(regs=regs, early_loads=early)
print(json.dumps(out))
"""


def test_one_row_kernel_requests_its_whole_slice_before_the_wait():
    """one_row_linear holds its whole 64 KB weight slice in registers, every load of it issued
    before the PDL wait, in each variant (plain, with the norm, summing partials, either signal
    placement). Compiled for sm_90 without a GPU (no TRITON_INTERPRET), registers counted by
    ptxas: no variant spills past an SM's register file (255 a thread at most), and the signal
    after the product takes few enough that two programs fit an SM (kernel comment)."""
    import json
    lin = _linear()
    out = run_compiled_for_hopper(_ONE_ROW_FOR_HOPPER)
    two_an_sm = 65536 // (2 * lin.ONE_ROW_WARPS * 32)
    for case, got in json.loads(out.strip().splitlines()[-1]).items():
        print(f"one-row kernel, {case}: {got}")
        assert got["regs"] < 255, f"{case}: {got['regs']} registers a thread (spilling)"
        if "signal_at_wait=False" in case:
            assert got["regs"] <= two_an_sm, f"{case}: {got['regs']} registers a thread > {two_an_sm}"
        # 16 rows x 2048 bf16 over 256 threads: 16 loads of 16 bytes each, all before the wait
        assert got["early_loads"] >= 16, got


@pytest.mark.parametrize("dtype", SMALL_DTYPES, ids=_dtype_ids)
def test_split_sum_folded_into_the_next_norm_linear(dtype, monkeypatch):
    """A one-row split-K product kept as partials (linear(keep_split=True) -> SplitSum) and summed
    by the next rms_norm_linear's one-row kernel: the new residual is bit for bit the one after
    the reduce kernel, and the product matches the reference; reduce() gives the plain result.
    Where the next op cannot fold (no one-row tile, gated, the switch off) it reduces first."""
    lin = _linear()
    monkeypatch.setattr(lin, "_norm_linear_on", lambda: True)
    monkeypatch.setattr(lin, "choose_linear_config",
                        lambda n, k, gated, device=None: lin.LinearConfig(block_n=16, block_k=64, split_k=3))
    k_down, hidden = 320, 96
    # As the 1B down projection (8192 -> 2048): too large for one_row_linear, so small_linear.
    real_tile = lin.one_row_tile
    monkeypatch.setattr(lin, "one_row_tile", lambda n, k, *a: None if k == k_down else real_tile(n, k, *a))
    h = torch.randn(1, k_down, dtype=dtype, device=DEVICE)
    w_down = torch.randn(hidden, k_down, dtype=dtype, device=DEVICE) / k_down ** 0.5
    residual = torch.randn(1, hidden, dtype=dtype, device=DEVICE)
    norm_w = (1 + 0.1 * torch.randn(hidden, device=DEVICE)).to(dtype)
    w_qkv = torch.randn(80, hidden, dtype=dtype, device=DEVICE) / hidden ** 0.5
    kept = lin.linear(h, w_down, keep_split=True)
    assert isinstance(kept, lin.SplitSum) and kept.parts.shape == (3, 1, hidden), kept
    plain = lin.linear(h, w_down)
    assert isinstance(plain, torch.Tensor) and torch.equal(kept.reduce(), plain)
    calls = []
    real = lin._one_row_norm_linear
    monkeypatch.setattr(lin, "_one_row_norm_linear", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    got, got_res = lin.rms_norm_linear(kept, residual, norm_w, 1e-5, w_qkv)
    assert calls == [3], "the one-row kernel should have summed the 3 partials itself"
    exp, exp_res = ref_ops.rms_norm_linear(plain, residual, norm_w, 1e-5, w_qkv)
    assert torch.equal(got_res, exp_res), "the new residual must be reduce(partials) + residual exactly"
    check_close("norm linear over partials", got, exp, TOL[dtype])
    # A gated projection next: the reduce kernel first, then the fused small_linear.
    w_gate_up = torch.randn(2 * 48, hidden, dtype=dtype, device=DEVICE) / hidden ** 0.5
    got_g, got_g_res = lin.rms_norm_linear(lin.linear(h, w_down, keep_split=True), residual, norm_w, 1e-5,
                                           w_gate_up, gated=True)
    exp_g, exp_g_res = ref_ops.rms_norm_linear(plain, residual, norm_w, 1e-5, w_gate_up, gated=True)
    assert torch.equal(got_g_res, exp_g_res)
    check_close("gated norm linear over reduced partials", got_g, exp_g, TOL[dtype])
    # With the switch off, linear never keeps the partials.
    monkeypatch.setattr(lin, "_norm_linear_on", lambda: False)
    assert isinstance(lin.linear(h, w_down, keep_split=True), torch.Tensor)
