"""decode_attention_block (one decode token's attention half in one kernel) vs the reference ops.

Fresh random inputs every run; outputs NaN-poisoned (conftest). On CPU the four phases run as four
launches through the interpreter (a grid barrier cannot open when programs run one at a time); on
a GPU the fused launch with its grid barriers is compared too, against the reference and against
the phased launches.
"""

from __future__ import annotations

import pytest
import torch

from kernel_testing import (ATTN_TOL, DEVICE, SMALL_DTYPES, check_close, engine_greedy_tokens, gpu_only,
                            make_attention_inputs, rope_cache, run_compiled_for_hopper)
from kernels import reference as ref_ops

_dtype_ids = lambda d: str(d).split(".")[-1]  # noqa: E731


def _block():
    from kernels import decode_block
    return decode_block


def _inputs(ctx, hidden, num_q_heads, num_kv_heads, head_dim, dtype, with_residual, page_size=16):
    att = make_attention_inputs([1], [ctx], num_q_heads, num_kv_heads, head_dim, page_size, dtype)
    pos = ctx - 1
    block = att["block_tables"][0, pos // page_size].item()
    qkv_n = (num_q_heads + 2 * num_kv_heads) * head_dim
    return dict(
        h=torch.randn(1, hidden, dtype=dtype, device=DEVICE),
        residual=torch.randn(1, hidden, dtype=dtype, device=DEVICE) if with_residual else None,
        norm_w=(1 + 0.1 * torch.randn(hidden, device=DEVICE)).to(dtype),
        qkv_w=(torch.randn(qkv_n, hidden, device=DEVICE) / hidden ** 0.5).to(dtype),
        o_w=(torch.randn(hidden, num_q_heads * head_dim, device=DEVICE) / hidden ** 0.5).to(dtype),
        eps=1e-5,
        positions=torch.tensor([pos], dtype=torch.int64, device=DEVICE),
        cos_sin_cache=rope_cache(ctx + 8, head_dim),
        k_cache=att["k_cache"], v_cache=att["v_cache"],
        slot_mapping=torch.tensor([block * page_size + pos % page_size], dtype=torch.int64, device=DEVICE),
        block_tables=att["block_tables"], context_lens=att["context_lens"],
        softmax_scale=att["softmax_scale"],
    )


def _run(fn, inputs, **kw):
    """fn on a copy of the cache; returns (out, residual_out, k_cache, v_cache)."""
    args = dict(inputs, k_cache=inputs["k_cache"].clone(), v_cache=inputs["v_cache"].clone())
    out, res = fn(**args, **kw)
    return out, res, args["k_cache"], args["v_cache"]


def _check(name, got, want, dtype, inputs):
    """Outputs close to the reference's; in each cache the new token's row close and every other
    row untouched (compared whole, a missing row would hide in a long context's tolerance)."""
    tol = ATTN_TOL[dtype]
    check_close(f"{name} out", got[0], want[0], tol)
    assert torch.equal(got[1], want[1]), f"{name}: residual_out differs from h + residual"
    page = inputs["k_cache"].shape[1]
    slot = inputs["slot_mapping"].item()
    block, offset = slot // page, slot % page
    for which, got_cache, want_cache in (("k", got[2], want[2]), ("v", got[3], want[3])):
        check_close(f"{name} new {which} row", got_cache[block, offset], want_cache[block, offset], tol)
        others = torch.ones(got_cache.shape[:2], dtype=torch.bool, device=got_cache.device)
        others[block, offset] = False
        assert torch.equal(got_cache[others], inputs[f"{which}_cache"][others]), f"{name}: {which} cache rows changed"


# (ctx, programs, num_splits): a one-token context, contexts not a multiple of the page or the
# attention tile, more splits than tiles (empty splits), several rows of qkv/o per program.
CASES = [(1, 8, None), (17, 8, 3), (50, 16, None), (100, 6, 2), (70, 40, 16)]


@pytest.mark.parametrize("dtype", SMALL_DTYPES, ids=_dtype_ids)
@pytest.mark.parametrize("ctx,programs,num_splits", CASES)
@pytest.mark.parametrize("with_residual", [True, False], ids=["residual", "first_layer"])
def test_decode_block_phases_match_reference(monkeypatch, dtype, ctx, programs, num_splits, with_residual):
    """GQA 4 / 2 heads of 32 dims, hidden 128, shared across `programs` programs."""
    db = _block()
    monkeypatch.setattr(db, "_programs", lambda device: programs)
    db._plan.cache_clear()
    inputs = _inputs(ctx, 128, 4, 2, 32, dtype, with_residual)
    want = _run(ref_ops.decode_attention_block, inputs)
    got = _run(db.decode_attention_block, inputs, fused=False, num_splits=num_splits)
    _check(f"phases ctx={ctx} p={programs} s={num_splits}", got, want, dtype, inputs)
    db._plan.cache_clear()


@pytest.mark.parametrize("fused", [False] + ([True] if DEVICE == "cuda" else []), ids=lambda f: "fused" if f else "phases")
def test_decode_block_inert_inputs(monkeypatch, fused):
    """A CUDA graph's warm-up and capture run with every sequence empty (context 0, slot -1,
    position 0): finite outputs (the attention part 0), and the caches untouched."""
    db = _block()
    if not fused:
        monkeypatch.setattr(db, "_programs", lambda device: 8)
        db._plan.cache_clear()
    inputs = _inputs(1, 128, 4, 2, 32, torch.float32, True)
    inputs.update(context_lens=torch.zeros_like(inputs["context_lens"]),
                  slot_mapping=torch.full_like(inputs["slot_mapping"], -1),
                  positions=torch.zeros_like(inputs["positions"]))
    out, res, k_cache, v_cache = _run(db.decode_attention_block, inputs, fused=fused)
    assert torch.equal(out, torch.zeros_like(out)), "no context: the attention output, and o's, is 0"
    assert torch.equal(res, inputs["h"] + inputs["residual"])
    assert torch.equal(k_cache, inputs["k_cache"]) and torch.equal(v_cache, inputs["v_cache"])
    db._plan.cache_clear()


def test_decode_block_plan_fits_only_what_registers_hold():
    """The 1B shape fits one program an SM of an H100; the 8B shape's qkv slice is too large."""
    plan = _block().DecodeBlockPlan
    one_b = plan(2048, 32, 8, 64, 2, 132)
    assert one_b.fits and (one_b.qkv_rows, one_b.o_rows) == (24, 16)
    assert one_b.num_splits(100) == 4 and one_b.num_splits(100000) == 12   # 132 - 32 merging programs
    assert not plan(4096, 32, 8, 128, 2, 132).fits
    assert not plan(2048, 32, 8, 64, 2, 4).fits   # fewer programs than query heads


def test_decode_block_is_opt_in(monkeypatch):
    """Off unless LLM_DECODE_BLOCK=1 (slower than the unfused kernels so far); then by shape."""
    fits = _block().decode_block_fits
    monkeypatch.delenv("LLM_DECODE_BLOCK", raising=False)
    assert not fits(2048, 32, 8, 64, torch.bfloat16, torch.device(DEVICE))
    monkeypatch.setenv("LLM_DECODE_BLOCK", "1")
    assert fits(2048, 32, 8, 64, torch.bfloat16, torch.device(DEVICE))   # 132 SMs: H100 / H200 / CPU default
    assert not fits(4096, 32, 8, 128, torch.bfloat16, torch.device(DEVICE))


@gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=_dtype_ids)
@pytest.mark.parametrize("ctx", [1, 31, 385, 4096])
@pytest.mark.parametrize("with_residual", [True, False], ids=["residual", "first_layer"])
def test_decode_block_fused_gpu(dtype, ctx, with_residual):
    """The 1B shape on the GPU's own grid: the fused launch (grid barriers) against the reference
    and, bit for bit, against the same phases launched one at a time; repeated launches reuse
    the barrier counter, which each launch advances by three grid sizes (never reset)."""
    db = _block()
    inputs = _inputs(ctx, 2048, 32, 8, 64, dtype, with_residual)
    want = _run(ref_ops.decode_attention_block, inputs)
    phased = _run(db.decode_attention_block, inputs, fused=False)
    for i in range(3):
        fused = _run(db.decode_attention_block, inputs, fused=True)
        counter = db._barrier_state(inputs["h"].device).item()
        assert counter % db._programs(inputs["h"].device) == 0
        if i > 0:
            assert counter == previous + 3 * db._programs(inputs["h"].device)
        previous = counter
        _check(f"fused ctx={ctx}", fused, want, dtype, inputs)
        for a, b in zip(fused, phased):
            assert torch.equal(a, b), "fused and phased launches differ"


@gpu_only
def test_decode_block_in_cuda_graph():
    """Captured once, replayed with a new token each time: matches the reference each step."""
    db = _block()
    dtype = torch.bfloat16
    inputs = _inputs(300, 2048, 32, 8, 64, dtype, True)
    db.decode_attention_block(**dict(inputs, k_cache=inputs["k_cache"].clone(),
                                     v_cache=inputs["v_cache"].clone()))   # eager first
    static = dict(inputs, k_cache=inputs["k_cache"].clone(), v_cache=inputs["v_cache"].clone())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out, g_res = db.decode_attention_block(**static, max_context_len=512)
    for step in range(3):
        static["h"].copy_(torch.randn_like(static["h"]))
        ref_in = dict(static, k_cache=static["k_cache"].clone(), v_cache=static["v_cache"].clone())
        want = _run(ref_ops.decode_attention_block, ref_in)
        graph.replay()
        check_close(f"graph step {step}", g_out, want[0], ATTN_TOL[dtype])
        assert torch.equal(g_res, want[1])


def test_engine_with_the_block_keeps_greedy_tokens(monkeypatch, tiny_model_dir):
    """The engine with LLM_DECODE_BLOCK=1 (Triton kernels: the interpreter on CPU, the fused launch
    and CUDA graphs on a GPU) runs the block for its one-token steps, a one-token prompt's prefill
    included, and generates the reference engine's greedy tokens (fp32)."""
    from kernels import triton_ops
    monkeypatch.setenv("LLM_DECODE_BLOCK", "1")
    calls = []
    block = triton_ops.decode_attention_block
    monkeypatch.setattr(triton_ops, "decode_attention_block", lambda *a, **kw: calls.append(1) or block(*a, **kw))
    with_block = engine_greedy_tokens(monkeypatch, tiny_model_dir, "triton", DEVICE)
    assert calls, "the engine never took the block"
    assert with_block == engine_greedy_tokens(monkeypatch, tiny_model_dir, "reference", "cpu")


_COMPILE_FOR_HOPPER = """
import sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels import decode_block
fn = decode_block._decode_block_kernel
pointers = {"cos_sin_ptr": "*fp32", "pos_ptr": "*i64", "slot_ptr": "*i64", "bt_ptr": "*i32", "ctx_ptr": "*i32",
            "part_m_ptr": "*fp32", "part_l_ptr": "*fp32", "part_acc_ptr": "*fp32", "bar_ptr": "*i64"}
consts = dict(HIDDEN=2048, BLOCK_H=2048, QKV_BLOCK=32, O_BLOCK=16, NUM_Q_HEADS=32, NUM_KV_HEADS=8, GROUP_PAD=4,
              HEAD_DIM=64, PAGE_SIZE=16, BLOCK_T=32, SPLITS_PAD=16, HAS_RESIDUAL=True, FIRST=0, LAST=3, PDL=1)
signature = {n: "constexpr" if n in consts else pointers.get(n, "*bf16") if n.endswith("_ptr")
             else "fp32" if n in ("eps", "qk_scale") else "i32" for n in fn.arg_names}
source = ASTSource(fn, signature, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=decode_block.NUM_WARPS))
sys.stdout.write(compiled.asm["ptx"])
"""


def test_fused_launch_compiles_for_hopper():
    """The fused launch (grid barriers in inline PTX) never runs in the CPU interpreter, so it is
    compiled here for sm_90 without a GPU (in a process without TRITON_INTERPRET): front-end errors
    show up in CI, and the PTX holds the three barriers' release / acquire pairs."""
    out = run_compiled_for_hopper(_COMPILE_FOR_HOPPER)
    ptx = out
    assert ptx.count("red.release.gpu.global.add.u64") == 3 and ptx.count("ld.acquire.gpu.global.u64") == 3
