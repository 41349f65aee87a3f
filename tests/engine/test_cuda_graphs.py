"""CUDA graphs must not change results: greedy tokens with every step replayed from a captured graph
(prefill, mixed and decode shapes) equal the eager engine's, in fp32 and bf16, alone and batched
(GPU only; skipped on CPU machines)."""
from __future__ import annotations

import pytest
import torch

from engine import EngineConfig, LLMEngine, SamplingParams

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = ["Once upon a time", "The quick brown fox jumps over the lazy dog. " * 4, "a",
           "你好，世界！😀", "def f(x):\n    return"]


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_graphs_on_and_off_give_identical_greedy_tokens(tiny_model_dir, dtype):
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    results = {}
    for eager in (True, False):
        engine = LLMEngine(EngineConfig(model_dir=str(tiny_model_dir), device="cuda", dtype=dtype,
                                        enforce_eager=eager, max_num_seqs=8, num_kv_blocks=512))
        assert (engine.runner.graphs is None) == eager
        alone = [engine.generate([p], params)[0].token_ids for p in PROMPTS]
        batched = [c.token_ids for c in engine.generate(PROMPTS, params)]
        results[eager] = (alone, batched)
        assert engine.block_manager.num_used_blocks == 0
        del engine
        torch.cuda.empty_cache()
    assert results[False] == results[True]


@needs_gpu
def test_long_context_shapes_split_the_kv_range_without_changing_tokens(tiny_model_dir, monkeypatch):
    """Long-context mixed shapes (KV splits) replayed from graphs give the eager run's tokens and
    the unsplit run's (fp32). The threshold is lowered so the tiny model's prompts reach it."""
    from engine.step_shapes import ShapeBuckets
    prompt = "The quick brown fox jumps over the lazy dog. " * 12
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    results = {}
    for name, threshold, eager in (("unsplit", 10**9, False), ("graphs", 64, False), ("eager", 64, True)):
        monkeypatch.setattr(ShapeBuckets, "LONG_CONTEXT", threshold)
        engine = LLMEngine(EngineConfig(model_dir=str(tiny_model_dir), device="cuda", dtype="float32",
                                        enforce_eager=eager, max_num_seqs=8, max_num_batched_tokens=32,
                                        num_kv_blocks=512))
        picked = []
        pick = engine.runner.buckets.pick
        engine.runner.buckets.pick = lambda *a: picked.append(pick(*a)) or picked[-1]
        results[name] = [c.token_ids for c in engine.generate([prompt] + PROMPTS, params)]
        assert any(s is not None and s.kv_splits for s in picked) == (threshold < 10**9)
        del engine
        torch.cuda.empty_cache()
    assert results["graphs"] == results["eager"] == results["unsplit"]


@needs_gpu
def test_short_context_decode_variant_keeps_the_tokens(tiny_model_dir, monkeypatch):
    """LLM_SHORT_DECODE_CONTEXT: decode steps of few sequences over short contexts replay graphs
    captured without KV splits; tokens equal the default graphs' (fp32)."""
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    results = {}
    for name, short in (("default", "0"), ("short", "100000")):
        monkeypatch.setenv("LLM_SHORT_DECODE_CONTEXT", short)
        engine = LLMEngine(EngineConfig(model_dir=str(tiny_model_dir), device="cuda", dtype="float32",
                                        max_num_seqs=8, num_kv_blocks=512))
        picked = []
        pick = engine.runner.buckets.pick
        engine.runner.buckets.pick = lambda *a: picked.append(pick(*a)) or picked[-1]
        results[name] = [c.token_ids for c in engine.generate(PROMPTS, params)]
        assert any(s is not None and s.decode and s.kv_splits == 1 for s in picked) == (name == "short")
        assert all(s in engine.runner.graphs for s in picked if s is not None)
        del engine
        torch.cuda.empty_cache()
    assert results["short"] == results["default"]


@needs_gpu
def test_greedy_steps_take_their_tokens_from_the_graph(tiny_model_dir, monkeypatch):
    """A replayed step computes its greedy tokens inside the graph: an all-greedy generation
    launches no sampling kernel of its own after start-up, and gives the eager engine's tokens;
    a sampled request (temperature) still goes through the sampler's kernels."""
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    engine = LLMEngine(EngineConfig(model_dir=str(tiny_model_dir), device="cuda", dtype="float32",
                                    max_num_seqs=8, num_kv_blocks=512))
    calls = []
    real = engine.sampler.ops.argmax_logsumexp
    monkeypatch.setattr(engine.sampler.ops, "argmax_logsumexp", lambda *a, **k: calls.append(1) or real(*a, **k))
    graphed = [c.token_ids for c in engine.generate(PROMPTS, params)]
    assert calls == []
    engine.generate(PROMPTS[:2], SamplingParams(max_tokens=4, temperature=0.8, seed=1))
    assert calls
    del engine
    torch.cuda.empty_cache()
    eager = LLMEngine(EngineConfig(model_dir=str(tiny_model_dir), device="cuda", dtype="float32",
                                   enforce_eager=True, max_num_seqs=8, num_kv_blocks=512))
    assert [c.token_ids for c in eager.generate(PROMPTS, params)] == graphed
