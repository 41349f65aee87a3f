"""rope_and_paged_attention: RoPE, the K/V cache write and paged attention in one decode launch,
with the split merge done by the last split (kernels/attention.py), against the reference
(rope_and_write_kv, then paged_attention).

Fresh random inputs each run; q, k and v are views of one qkv row, as the model passes them.
Besides the output, each test checks the cache the launch wrote and that the merge counters are
left at zero for the next launch.
"""

from __future__ import annotations

import random

import pytest
import torch

from kernel_testing import (ATTN_TOL, DEVICE, ON_GPU, SMALL_DTYPES, check_close, engine_greedy_tokens,
                            gpu_only, make_attention_inputs, rope_cache, run_compiled_for_hopper)
from kernels import reference as ref_ops

# name: (qlens, context_lens, Hq, Hkv, head_dim, page_size)
SCENARIOS = {
    # one new token at a tile's end, start and inside; a one-token prompt
    "decode_gqa4": ([1] * 7, [16, 17, 32, 33, 64, 100, 1], 8, 2, 64, 16),
    # decode tiles of a few tokens (GQA 4 takes up to 4), one empty query
    "short_queries_gqa4": ([1, 2, 3, 4, 0, 2], [32, 33, 50, 64, 9, 18], 8, 2, 64, 16),
    # MHA, D=128, a page smaller than the KV tile
    "decode_mha_d128": ([1, 1, 1], [9, 40, 71], 2, 2, 128, 8),
    # a prompt longer than a decode tile: the flat grid, RoPE as its own kernel
    "mixed_with_prefill": ([1, 9, 1], [30, 9, 47], 8, 2, 64, 16),
    # a GQA group of 3 (padded to 4 rows), two new tokens in one tile
    "gqa3_two_tokens": ([2, 1, 1], [40, 17, 64], 6, 2, 64, 16),
}


def _inputs(qlens, ctxs, hq, hkv, d, page, dtype, pad_slot=False):
    """Attention inputs plus the qkv projection's q/k/v views, positions, slots and RoPE table.
    pad_slot: the last token's slot is -1 (a padding row: nothing written)."""
    inputs = make_attention_inputs(qlens, ctxs, hq, hkv, d, page, dtype)
    num_tokens = sum(qlens)
    qkv = torch.randn(num_tokens, (hq + 2 * hkv) * d, dtype=dtype, device=DEVICE)
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    positions, slots = [], []
    tables = inputs["block_tables"].long().cpu()
    for b, (qlen, ctx) in enumerate(zip(qlens, ctxs)):
        for pos in range(ctx - qlen, ctx):
            positions.append(pos)
            slots.append(int(tables[b, pos // page]) * page + pos % page)
    if pad_slot and slots:
        slots[-1] = -1
    del inputs["q"]
    inputs.update(q=q.view(num_tokens, hq, d), k=k.view(num_tokens, hkv, d), v=v.view(num_tokens, hkv, d),
                  positions=torch.tensor(positions, dtype=torch.long, device=DEVICE),
                  cos_sin_cache=rope_cache(max(ctxs) + 1, d),
                  slot_mapping=torch.tensor(slots, dtype=torch.long, device=DEVICE))
    return inputs


def _check(name, inputs, dtype, counters=None, **kw):
    """Runs the Triton op and the reference on copies of the cache; compares outputs and caches."""
    from kernels import triton_ops
    ref_in = dict(inputs, k_cache=inputs["k_cache"].clone(), v_cache=inputs["v_cache"].clone())
    expected = ref_ops.rope_and_paged_attention(**ref_in)
    qkv_before = [inputs[n].clone() for n in ("q", "k", "v")]
    got = triton_ops.rope_and_paged_attention(**inputs, merge_counters=counters, **kw)
    check_close(f"{name}: output", got, expected, ATTN_TOL[dtype])
    # The cache: every slot the reference wrote holds the same rotated k / v (RoPE rounds once,
    # in fp32, to the cache dtype: equal up to one rounding step), and nothing else changed.
    check_close(f"{name}: k cache", inputs["k_cache"], ref_in["k_cache"], 1e-2 if dtype != torch.float32 else 1e-6)
    assert torch.equal(inputs["v_cache"], ref_in["v_cache"]), f"{name}: v cache differs"
    for n, before in zip(("q", "k", "v"), qkv_before):
        assert torch.equal(inputs[n], before), f"{name}: input {n} was modified"
    if counters is not None:
        assert not counters.any(), f"{name}: merge counters not reset: {counters.tolist()}"


@pytest.fixture(autouse=True)
def fused(monkeypatch):
    """The fusions are off by default (LLM_FUSED_DECODE_ATTENTION, read once): these tests turn
    them on; `mode` switches to another setting."""
    from kernels import attention
    monkeypatch.setattr(attention, "_fusion_mode", lambda: "1")

    def mode(value: str) -> None:
        monkeypatch.setattr(attention, "_fusion_mode", lambda: value)
    return mode


@pytest.mark.parametrize("mode", ["1", "rope", "0"], ids=["fused", "rope_only", "kernels"])
@pytest.mark.parametrize("num_splits", [1, 3, None], ids=["nosplit", "split3", "auto"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rope_and_paged_attention_matches_reference(scenario, num_splits, mode, fused, monkeypatch):
    """Every setting of LLM_FUSED_DECODE_ATTENTION gives the reference's output and cache; the
    fused ones launch no RoPE kernel on the decode grid, and merge without the merge kernel."""
    from kernels import attention
    fused(mode)
    launched = []
    monkeypatch.setattr(attention, "_merge_splits_kernel",
                        _Counting(attention._merge_splits_kernel, "merge", launched))
    monkeypatch.setattr(attention, "rope_and_write_kv", _CountingFn(attention.rope_and_write_kv, launched))
    qlens, ctxs, hq, hkv, d, page = SCENARIOS[scenario]
    inputs = _inputs(qlens, ctxs, hq, hkv, d, page, torch.float32)
    counters = torch.zeros(len(qlens) * hkv, dtype=torch.int32, device=DEVICE)
    _check(f"{scenario}, splits={num_splits}, mode {mode}", inputs, torch.float32, counters,
           num_splits=num_splits)
    # A query longer than one decode tile (its size depends on the device's tile config): the flat grid.
    flat = attention._grid_is_flat(inputs["q"], inputs["k_cache"], max(qlens), None)
    assert flat == (scenario == "mixed_with_prefill" and not ON_GPU), "the scenarios no longer cover both grids"
    assert ("rope" in launched) == (flat or mode == "0"), launched
    if num_splits == 3:
        assert ("merge" in launched) == (flat or mode != "1"), launched


class _Counting:
    """A Triton kernel whose launches are recorded (kernel[grid](...))."""

    def __init__(self, kernel, name, log):
        self.kernel, self.name, self.log = kernel, name, log

    def __getitem__(self, grid):
        self.log.append(self.name)
        return self.kernel[grid]


class _CountingFn:
    def __init__(self, fn, log):
        self.fn, self.log = fn, log

    def __call__(self, *args, **kwargs):
        self.log.append("rope")
        return self.fn(*args, **kwargs)


@pytest.mark.parametrize("dtype", [d for d in SMALL_DTYPES if d != torch.float32],
                         ids=lambda d: str(d).split(".")[-1])
def test_rope_and_paged_attention_low_precision_and_padding_slot(dtype):
    qlens, ctxs, hq, hkv, d, page = SCENARIOS["decode_gqa4"]
    inputs = _inputs(qlens, ctxs, hq, hkv, d, page, dtype, pad_slot=True)
    counters = torch.zeros(len(qlens) * hkv, dtype=torch.int32, device=DEVICE)
    _check(f"{dtype}, padding slot", inputs, dtype, counters, num_splits=4)


def test_merge_without_counters_and_counters_reused():
    """No counters (or too few): the merge kernel runs; the same counters serve launch after
    launch (each leaves them at zero)."""
    qlens, ctxs, hq, hkv, d, page = SCENARIOS["short_queries_gqa4"]
    _check("no counters", _inputs(qlens, ctxs, hq, hkv, d, page, torch.float32), torch.float32,
           None, num_splits=3)
    few = torch.zeros(hkv, dtype=torch.int32, device=DEVICE)
    _check("too few counters", _inputs(qlens, ctxs, hq, hkv, d, page, torch.float32), torch.float32,
           few, num_splits=3)
    counters = torch.zeros(len(qlens) * hkv + 5, dtype=torch.int32, device=DEVICE)
    for splits in (2, 3, 5):
        _check(f"reused counters, {splits} splits", _inputs(qlens, ctxs, hq, hkv, d, page, torch.float32),
               torch.float32, counters, num_splits=splits)


@pytest.mark.parametrize("num_splits", [17, 40])
def test_many_splits_merged_by_the_last(num_splits):
    """More splits than one 16-wide chunk of the merge (SPLITS_PAD 32 and 64), most of them
    empty, and new tokens of one tile falling into two splits (16-token tiles)."""
    from kernels.attention import AttnConfig
    qlens, ctxs, hq, hkv, d, page = [3, 1, 4, 2], [33, 100, 48, 17], 8, 2, 64, 16
    inputs = _inputs(qlens, ctxs, hq, hkv, d, page, torch.float32)
    counters = torch.zeros(len(qlens) * hkv, dtype=torch.int32, device=DEVICE)
    _check(f"{num_splits} splits", inputs, torch.float32, counters, num_splits=num_splits,
           config=AttnConfig(block_m=16, block_n=16, num_warps=4, num_stages=1))


def test_early_reads_see_only_earlier_steps_tokens():
    """Before its PDL wait the kernel reads the first KV tile of its share (from `early_kv_cache`
    in this test): only tokens of earlier steps may be read there, since the new ones are
    written after the wait. The early copy holds huge values in the new tokens' slots."""
    from kernels.attention import AttnConfig
    qlens, ctxs, hq, hkv, d, page = [1, 2, 3, 4, 1, 1], [32, 33, 50, 64, 16, 17], 8, 2, 64, 16
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    inputs = _inputs(qlens, ctxs, hq, hkv, d, page, dtype)
    stale_k, stale_v = inputs["k_cache"].clone(), inputs["v_cache"].clone()
    for slot in inputs["slot_mapping"].tolist():
        stale_k.view(-1, hkv, d)[slot] = 300.0
        stale_v.view(-1, hkv, d)[slot] = 300.0
    counters = torch.zeros(len(qlens) * hkv, dtype=torch.int32, device=DEVICE)
    for splits in (max(ctxs) // 16, max(ctxs) // 32):
        _check(f"stale early cache, {splits} splits", dict(inputs, k_cache=inputs["k_cache"].clone(),
                                                            v_cache=inputs["v_cache"].clone()),
               dtype, counters, num_splits=splits, early_kv_cache=(stale_k, stale_v),
               config=AttnConfig(block_m=16, block_n=16, num_warps=4, num_stages=1))


@gpu_only
@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("num_splits", [1, None, 16], ids=["nosplit", "auto", "split16"])
@pytest.mark.parametrize("d", [64, 128])
def test_gpu_rope_and_decode_attention(batch, num_splits, d):
    seed = random.randrange(1 << 30)
    random.seed(seed)
    ctxs = [random.randint(1, 4096) for _ in range(batch)]
    ctxs[0] = 4096
    inputs = _inputs([1] * batch, ctxs, 32, 8, d, 16, torch.bfloat16)
    counters = torch.zeros(batch * 8, dtype=torch.int32, device=DEVICE)
    _check(f"gpu B{batch} d{d} splits={num_splits} (seed {seed})", inputs, torch.bfloat16, counters,
           num_splits=num_splits, max_context_len=4096)


def test_engine_with_the_fusions_keeps_greedy_tokens(monkeypatch, fused, tiny_model_dir):
    """The engine with LLM_FUSED_DECODE_ATTENTION=1 and LLM_NORM_LINEAR=1 (Triton kernels: the
    interpreter on CPU, CUDA graphs on a GPU) takes the one-launch decode attention, merging
    splits without the merge kernel, sums the down projection's split-K partials in the next
    layer's qkv kernel, and generates the reference engine's greedy tokens (fp32)."""
    from kernels import attention, linear
    monkeypatch.setattr(linear, "_norm_linear_on", lambda: True)
    # Contexts this short take one split; three make the last split merge.
    monkeypatch.setattr(attention, "choose_num_splits", lambda *a, **kw: 3)
    # The tiny model's down projection (K = 128) as the 1B one: small_linear with split K.
    real_tile, real_config = linear.one_row_tile, linear.choose_linear_config
    monkeypatch.setattr(linear, "one_row_tile", lambda n, k, *a: None if k == 128 else real_tile(n, k, *a))
    monkeypatch.setattr(linear, "choose_linear_config", lambda n, k, gated, device=None: (
        linear.LinearConfig(block_n=16, block_k=32, split_k=2) if k == 128 and not gated
        else real_config(n, k, gated, device)))
    folded = []
    real_fold = linear._one_row_norm_linear
    monkeypatch.setattr(linear, "_one_row_norm_linear", lambda *a, **kw: folded.append(a[1]) or real_fold(*a, **kw))
    launched = []
    monkeypatch.setattr(attention, "_merge_splits_kernel",
                        _Counting(attention._merge_splits_kernel, "merge", launched))
    fused_launches = []
    real = attention._paged_attention_kernel
    monkeypatch.setattr(attention, "_paged_attention_kernel", _Counting(real, "attention", fused_launches))
    with_fusions = engine_greedy_tokens(monkeypatch, tiny_model_dir, "triton", DEVICE, max_model_len=512)
    assert fused_launches and "merge" not in launched, launched
    assert 2 in folded, f"no qkv kernel summed the down projection's partials: {folded}"
    assert with_fusions == engine_greedy_tokens(monkeypatch, tiny_model_dir, "reference", "cpu", max_model_len=512)


_COMPILE_FOR_HOPPER = """
import sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels import attention
fn = attention._paged_attention_kernel
pointers = {"block_tables_ptr": "*i32", "context_lens_ptr": "*i32", "cu_seqlens_q_ptr": "*i32",
            "tile_seqs_ptr": "*i32", "part_m_ptr": "*fp32", "part_l_ptr": "*fp32", "part_acc_ptr": "*fp32",
            "pos_ptr": "*i64", "cos_sin_ptr": "*fp32", "slot_ptr": "*i64", "counters_ptr": "*i32"}
consts = dict(NUM_Q_HEADS=32, GROUP=4, GROUP_PAD=4, HEAD_DIM=64, PAGE_SIZE=16, BLOCK_Q=4, BLOCK_N=128,
              SPLIT=True, DOT_PRECISION="tf32", FLAT=False, PDL=2, SHORT_Q=0, ROPE=True, MERGE_LAST=True,
              SPLITS_PAD=32)
signature = {n: "constexpr" if n in consts else pointers.get(n, "*bf16") if n.endswith("_ptr")
             else "fp32" if n == "qk_scale" else "i32" for n in fn.arg_names}
source = ASTSource(fn, signature, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=1))
sys.stdout.write(compiled.asm["ptx"])
"""


def test_fused_decode_attention_compiles_for_hopper():
    """The fused decode launch is compiled here for sm_90 without a GPU (in a process without
    TRITON_INTERPRET), so front-end errors show in CI: the PTX holds the arrival count (one atomic
    add with acquire-release semantics at GPU scope)."""
    out = run_compiled_for_hopper(_COMPILE_FOR_HOPPER)
    ptx = out
    assert ptx.count("atom.global.gpu.acq_rel.add") == 1, "the last split's arrival count is missing"
    # The order the merge relies on: partial stores, a CTA barrier, the arrival, then the other
    # programs' partials read past L1; and the new K/V stored, a CTA barrier, before the tiles.
    arrive = ptx.index("atom.global.gpu.acq_rel.add")
    assert "bar.sync" in ptx[:arrive] and "st.global" in ptx[:arrive], "no barrier / stores before the arrival"
    assert "ld.global.cg" in ptx[arrive:], "the merge's loads of other programs' partials may hit a stale L1"
    first_store = ptx.index("st.global")
    assert "bar.sync" in ptx[first_store:arrive], "no CTA barrier between the K/V write and the tile reads"


@gpu_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gpu_short_queries_many_splits(dtype):
    """On the GPU (PDL, real ordering): tiles of several new tokens that straddle split
    boundaries, a GQA group of 3, more splits than one merge chunk."""
    seed = random.randrange(1 << 30)
    random.seed(seed)
    qlens = [random.randint(1, 4) for _ in range(6)]
    ctxs = [random.randint(q, 3000) for q in qlens]
    inputs = _inputs(qlens, ctxs, 24, 8, 128, 16, dtype)
    counters = torch.zeros(len(qlens) * 8, dtype=torch.int32, device=DEVICE)
    for splits in (5, 40):
        _check(f"gpu short queries {dtype} splits={splits} (seed {seed})",
               dict(inputs, k_cache=inputs["k_cache"].clone(), v_cache=inputs["v_cache"].clone()),
               dtype, counters, num_splits=splits, max_context_len=3000)


@gpu_only
def test_gpu_fused_layers_in_a_cuda_graph():
    """Twenty layers' fused launches back to back in one CUDA graph (as a step runs them, PDL
    chaining the launches), replayed three times with one set of counters: every layer's output
    and cache equal the reference's and the counters are zero after each replay."""
    from kernels import triton_ops
    seed = random.randrange(1 << 30)
    random.seed(seed)
    qlens, ctxs = [1, 1, 2], [random.randint(300, 2000) for _ in range(3)]
    layers = [_inputs(qlens, ctxs, 32, 8, 64, 16, torch.bfloat16) for _ in range(20)]
    counters = torch.zeros(len(qlens) * 8, dtype=torch.int32, device=DEVICE)
    refs = []
    for inputs in layers:
        ref_in = dict(inputs, k_cache=inputs["k_cache"].clone(), v_cache=inputs["v_cache"].clone())
        refs.append((ref_ops.rope_and_paged_attention(**ref_in), ref_in["k_cache"], ref_in["v_cache"]))

    def step():
        return [triton_ops.rope_and_paged_attention(**inputs, merge_counters=counters, num_splits=16,
                                                    max_context_len=2048) for inputs in layers]
    step()   # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    for replay in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert not counters.any(), f"replay {replay}: counters {counters.tolist()} (seed {seed})"
        for i, (out, (expected, k_ref, v_ref)) in enumerate(zip(outs, refs)):
            check_close(f"graph replay {replay} layer {i} (seed {seed})", out, expected, ATTN_TOL[torch.bfloat16])
            assert torch.equal(layers[i]["v_cache"], v_ref)
