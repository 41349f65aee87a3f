"""Shared helpers for the kernel tests (inputs, comparisons)."""

from __future__ import annotations

import math

import pytest
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
gpu_only = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")

# Dtypes the small-shape tests run in: the interpreter (CPU) cannot do bf16.
SMALL_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])

# Max relative L2 error ||out - ref|| / ||ref|| of a kernel vs the reference.
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# Attention accumulates differently (online softmax, P rounded for the second
# matmul), so low precision gets a wider bound.
ATTN_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (out.double() - ref.double()).norm()
    return (diff / ref.double().norm().clamp_min(1e-30)).item()


def check_close(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float) -> float:
    """Assert shape/dtype match, every element written (finite), rel err <= tol."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"{name}: dtype {out.dtype} != {ref.dtype}"
    bad = (~torch.isfinite(out)).sum().item()
    assert bad == 0, f"{name}: {bad} of {out.numel()} elements not written / not finite"
    assert ref.norm() > 0, f"{name}: reference is all zeros, test cannot fail"
    err = rel_err(out, ref)
    max_abs = (out.double() - ref.double()).abs().max().item() if out.numel() else 0.0
    print(f"{name}: rel_err={err:.3e} max_abs={max_abs:.3e} (tol {tol:.0e})")
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.0e}"
    return err


# --------------------------------------------------------------------------
# Paged attention inputs
# --------------------------------------------------------------------------

def make_attention_inputs(qlens, ctx_lens, num_q_heads, num_kv_heads, head_dim,
                          page_size, dtype, device=DEVICE, spare_blocks=3,
                          table_fill=-1):
    """Random q and paged K/V cache with shuffled, non-contiguous block tables.

    Block table entries past a sequence's last page are `table_fill` (-1, or
    None for random valid block ids) so the kernel must not read them.
    """
    assert len(qlens) == len(ctx_lens)
    assert all(0 <= ql <= c for ql, c in zip(qlens, ctx_lens))
    pages = [-(-c // page_size) for c in ctx_lens]
    num_blocks = sum(pages) + spare_blocks
    max_pages = max(pages + [1]) + 2
    perm = torch.randperm(num_blocks)
    if table_fill is None:
        block_tables = torch.randint(0, num_blocks, (len(qlens), max_pages), dtype=torch.int32)
    else:
        block_tables = torch.full((len(qlens), max_pages), table_fill, dtype=torch.int32)
    used = 0
    for b, n in enumerate(pages):
        block_tables[b, :n] = perm[used:used + n].to(torch.int32)
        used += n
    k_cache = torch.randn(num_blocks, page_size, num_kv_heads, head_dim, dtype=dtype, device=device)
    v_cache = torch.randn_like(k_cache)
    cu = [0]
    for ql in qlens:
        cu.append(cu[-1] + ql)
    q = torch.randn(cu[-1], num_q_heads, head_dim, dtype=dtype, device=device)
    return dict(
        q=q, k_cache=k_cache, v_cache=v_cache,
        block_tables=block_tables.to(device),
        context_lens=torch.tensor(ctx_lens, dtype=torch.int32, device=device),
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
        max_seqlen_q=max(list(qlens) + [0]),
        softmax_scale=1.0 / math.sqrt(head_dim),
    )


def rope_cache(max_positions: int, head_dim: int, base: float = 10000.0, device=DEVICE):
    """Standard RoPE table [max_positions, D]: cos | sin of the D/2 frequencies."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(max_positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1).float().to(device)


# --------------------------------------------------------------------------
# Engine runs (the kernels inside a whole model)
# --------------------------------------------------------------------------

ENGINE_PROMPTS = ["Once upon a time", "a"]   # a one-token prompt's prefill is a one-token step too


def engine_greedy_tokens(monkeypatch, model_dir, kernels: str, device: str, max_model_len: int = 256,
                         max_tokens: int = 4) -> list[list[int]]:
    """Greedy continuations of ENGINE_PROMPTS by an fp32 engine on `model_dir` with the
    `kernels` set (LLM_KERNELS: triton, the interpreter on CPU; or reference), one request at a time."""
    from engine import EngineConfig, LLMEngine, SamplingParams
    monkeypatch.setenv("LLM_KERNELS", kernels)
    engine = LLMEngine(EngineConfig(model_dir=str(model_dir), device=device, dtype="float32",
                                    num_kv_blocks=64, max_model_len=max_model_len))
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return [engine.generate([p], params)[0].token_ids for p in ENGINE_PROMPTS]


def run_compiled_for_hopper(code: str) -> str:
    """Runs `code` (a script that compiles kernels with triton.compile for sm_90) in a process
    without TRITON_INTERPRET, from the repository root; returns its stdout. No GPU is needed, so
    CI sees front-end errors of launches the interpreter never makes, and what the PTX holds."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout
