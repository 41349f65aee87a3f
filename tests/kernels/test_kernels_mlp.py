"""kernels/mlp.py: the one-kernel SwiGLU MLP (gated_mlp) and rms_norm_mlp against the reference,
on CPU through Triton's interpreter at small shapes and on a GPU at the model's shapes."""

from __future__ import annotations

import random

import pytest
import torch

from kernel_testing import DEVICE, SMALL_DTYPES, TOL, check_close, engine_greedy_tokens, gpu_only

from kernels import reference
from kernels.mlp import MAX_MLP_ROWS, MlpConfig


def _weights(hidden: int, inter: int, dtype, transposed: bool, device=DEVICE):
    gate_up = torch.randn(2 * inter, hidden, device=device) * hidden ** -0.5
    down = torch.randn(hidden, inter, device=device) * inter ** -0.5
    if transposed:   # [I, H] storage seen as [H, I]
        down = down.t().contiguous().t()
    return gate_up.to(dtype), down.to(dtype)


def _reference_mlp(x, gate_up, down):
    """The two projections in fp32 with the activations rounded to x's dtype between them, as
    the kernel (and the two-kernel path) rounds them."""
    act = reference.silu_and_mul(reference.linear(x.float(), gate_up.float())).to(x.dtype)
    return reference.linear(act.float(), down.float()).to(x.dtype)


# (rows, hidden, intermediate, config): ragged intermediate sizes (not a multiple of block_i),
# hidden not a multiple of block_k / block_n, one row and the most rows.
CASES = [
    (1, 64, 96, MlpConfig(block_i=16, block_k=32, block_n=32)),
    (3, 80, 100, MlpConfig(block_i=32, block_k=32, block_n=64)),
    (MAX_MLP_ROWS, 64, 64, MlpConfig(block_i=16, block_k=64, block_n=16)),
    (2, 48, 40, MlpConfig(block_i=16, block_k=16, block_n=32, reduce_block_n=16)),
]


@pytest.mark.parametrize("dtype", SMALL_DTYPES, ids=str)
@pytest.mark.parametrize("transposed", [False, True], ids=["hf_down", "transposed_down"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_gated_mlp_matches_reference(case, transposed, dtype):
    from kernels.mlp import gated_mlp
    rows, hidden, inter, config = CASES[case]
    seed = random.randrange(1 << 30)
    torch.manual_seed(seed)
    gate_up, down = _weights(hidden, inter, dtype, transposed)
    x = torch.randn(rows, hidden, device=DEVICE).to(dtype)
    out = gated_mlp(x, gate_up, down, config)
    check_close(f"gated_mlp {rows}x{hidden}x{inter} {dtype} (seed {seed})", out,
                _reference_mlp(x, gate_up, down), TOL[dtype] * (2 if dtype != torch.float32 else 1))


def test_gated_mlp_is_deterministic_and_writes_into_out():
    """The partials are summed in a fixed order: two runs agree bit for bit, and `out` (a row
    view with a stride) is the result."""
    from kernels.mlp import gated_mlp
    gate_up, down = _weights(64, 80, torch.float32, False)
    x = torch.randn(2, 64, device=DEVICE)
    config = MlpConfig(block_i=16, block_k=32, block_n=32)
    first = gated_mlp(x, gate_up, down, config)
    buffer = torch.full((2, 100), float("nan"), device=DEVICE)
    out = buffer[:, 10:74]
    assert gated_mlp(x, gate_up, down, config, out=out) is out
    assert torch.equal(first, out)
    assert torch.isnan(buffer[:, :10]).all() and torch.isnan(buffer[:, 74:]).all()


@pytest.mark.parametrize("with_residual", [False, True], ids=["first_layer", "residual"])
def test_rms_norm_mlp_fused_matches_reference(monkeypatch, with_residual):
    """rms_norm_mlp with LLM_FUSED_MLP=1 (the norm kernel, then gated_mlp) against the reference
    op: output and new residual."""
    from kernels import mlp
    monkeypatch.setattr(mlp, "mlp_config", lambda: MlpConfig(block_i=16, block_k=32, block_n=32))
    launched = []
    real = mlp.gated_mlp
    monkeypatch.setattr(mlp, "gated_mlp", lambda *a, **kw: launched.append(1) or real(*a, **kw))
    gate_up, down = _weights(64, 96, torch.float32, False)
    norm_w = torch.rand(64, device=DEVICE) + 0.5
    x = torch.randn(1, 64, device=DEVICE)
    residual = torch.randn(1, 64, device=DEVICE) if with_residual else None
    out, new_residual = mlp.rms_norm_mlp(x, residual, norm_w, 1e-5, gate_up, down)
    ref, ref_residual = reference.rms_norm_mlp(x, residual, norm_w, 1e-5, gate_up, down)
    assert launched, "the fused MLP did not run"
    check_close("rms_norm_mlp", out, ref, TOL[torch.float32])
    assert torch.equal(new_residual, ref_residual)


def test_rms_norm_mlp_unfused_above_the_row_limit(monkeypatch):
    """More rows than the fused kernel takes go through the two projections."""
    from kernels import mlp
    monkeypatch.setattr(mlp, "mlp_config", lambda: MlpConfig(block_i=16, block_k=32, block_n=32))
    monkeypatch.setattr(mlp, "gated_mlp", lambda *a, **kw: pytest.fail("fused MLP above the row limit"))
    gate_up, down = _weights(32, 48, torch.float32, False)
    norm_w = torch.rand(32, device=DEVICE) + 0.5
    x = torch.randn(MAX_MLP_ROWS + 1, 32, device=DEVICE)
    out, _ = mlp.rms_norm_mlp(x, x, norm_w, 1e-5, gate_up, down)
    ref, _ = reference.rms_norm_mlp(x, x, norm_w, 1e-5, gate_up, down)
    check_close("rms_norm_mlp unfused", out, ref, TOL[torch.float32])


def test_mlp_config_from_environment(monkeypatch):
    from kernels import mlp
    for value, expected in (("0", None), ("1", MlpConfig())):
        monkeypatch.setenv("LLM_FUSED_MLP", value)
        monkeypatch.delenv("LLM_MLP_CONFIG", raising=False)
        mlp.mlp_config.cache_clear()
        assert mlp.mlp_config() == expected
    monkeypatch.setenv("LLM_MLP_CONFIG", "32,256,64,8,3")
    mlp.mlp_config.cache_clear()
    assert mlp.mlp_config() == MlpConfig(32, 256, 64, 8, 3)
    monkeypatch.setenv("LLM_MLP_CONFIG", "32,256,64,8,3,32")
    mlp.mlp_config.cache_clear()
    assert mlp.mlp_config().reduce_block_n == 32
    mlp.mlp_config.cache_clear()


def test_engine_with_the_fused_mlp_keeps_greedy_tokens(monkeypatch, tiny_model_dir):
    """The engine with the fused MLP (Triton kernels: the interpreter on CPU, CUDA graphs on a
    GPU) generates the reference engine's greedy tokens (fp32), and every decode step's MLP
    took the fused kernel."""
    from kernels import mlp
    monkeypatch.setattr(mlp, "mlp_config", lambda: MlpConfig(block_i=16, block_k=32, block_n=64))
    rows = []
    real = mlp.gated_mlp
    monkeypatch.setattr(mlp, "gated_mlp", lambda x, *a, **kw: rows.append(x.shape[0]) or real(x, *a, **kw))
    fused = engine_greedy_tokens(monkeypatch, tiny_model_dir, "triton", DEVICE)
    assert 1 in rows, f"no one-row step took the fused MLP: {sorted(set(rows))}"
    assert fused == engine_greedy_tokens(monkeypatch, tiny_model_dir, "reference", "cpu")


_COMPILE_FOR_HOPPER = """
import sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels import mlp
fn = mlp._gated_mlp_kernel
consts = dict(BLOCK_M=16, BLOCK_I=64, BLOCK_K=128, BLOCK_N=128, DOT_PRECISION="tf32", PDL=1)
ints = {"M": 1, "H": 2048, "I": 8192}
signature = {n: "constexpr" if n in consts else ("*fp32" if n == "part_ptr" else "*bf16") if n.endswith("_ptr")
             else "i32" for n in fn.arg_names}
attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in fn.arg_names
         if n.endswith("_ptr") or n in ("H", "I", "stride_gu", "stride_dn")}
source = ASTSource(fn, signature, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()}
                   | {(fn.arg_names.index("stride_di"),): 1}, attrs=attrs)
compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=3))
sys.stdout.write(compiled.asm["ptx"])
"""


def test_gated_mlp_compiles_for_hopper():
    """The fused MLP compiles for sm_90 without a GPU (CI sees front-end errors the interpreter
    does not), its weight reads are vectorised, and it waits on the previous kernel (PDL) after
    its first weight reads."""
    from kernel_testing import run_compiled_for_hopper
    ptx = run_compiled_for_hopper(_COMPILE_FOR_HOPPER)
    assert "griddepcontrol.wait" in ptx
    assert "cp.async" in ptx or "ld.global.v4" in ptx, "weight loads are not vectorised"
    wait = ptx.index("griddepcontrol.wait")
    assert "ld.global" in ptx[:wait] or "cp.async" in ptx[:wait], "no weight read before the wait"


@gpu_only
@pytest.mark.parametrize("rows", [1, 16])
@pytest.mark.parametrize("transposed", [False, True], ids=["hf_down", "transposed_down"])
def test_gpu_gated_mlp_model_shapes(rows, transposed):
    """bf16 at the 1B and 8B MLP shapes, in a CUDA graph replayed twice (PDL chaining)."""
    from kernels.mlp import gated_mlp
    seed = random.randrange(1 << 30)
    torch.manual_seed(seed)
    for hidden, inter in ((2048, 8192), (4096, 14336)):
        gate_up, down = _weights(hidden, inter, torch.bfloat16, transposed)
        x = torch.randn(rows, hidden, device=DEVICE).to(torch.bfloat16)
        ref = _reference_mlp(x, gate_up, down)
        check_close(f"gpu gated_mlp {rows}x{hidden}x{inter} (seed {seed})", gated_mlp(x, gate_up, down), ref,
                    TOL[torch.bfloat16])
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = gated_mlp(gated_mlp(x, gate_up, down), gate_up, down)
        for _ in range(2):
            out.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            check_close("gpu gated_mlp twice in a graph", out,
                        _reference_mlp(gated_mlp(x, gate_up, down), gate_up, down), TOL[torch.bfloat16])
