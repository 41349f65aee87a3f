"""Step padding (engine/step_shapes.py): every step fits a bucket, and padding is inert, i.e. a
padded step computes for its real tokens what the unpadded step computes. On the GPU every step is
padded (that is what lets CUDA graphs replay them); here the CPU runs the same padded steps through
the reference kernels, so a padding bug shows in CI."""
from __future__ import annotations

import pytest
import torch

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.step_shapes import ShapeBuckets, StepShape, decode_buckets, token_buckets

PROMPTS = ["Once upon a time", "The quick brown fox jumps over the lazy dog. " * 4, "a",
           "你好，世界！😀", "def f(x):\n    return"]


def test_buckets_cover_every_size():
    for max_batch in (1, 3, 8, 17, 256):
        b = decode_buckets(max_batch)
        assert b == sorted(set(b)) and b[-1] == max_batch
    for max_tokens in (8, 16, 100, 512, 2064, 8192):
        t = token_buckets(max_tokens)
        assert t == sorted(set(t)) and t[-1] == max_tokens
        assert all(x % 16 == 0 for x in t[:-1])
        # padding never more than doubles a small step, and adds at most 1/3 to a large one
        assert all(nxt <= 2 * cur for cur, nxt in zip(t, t[1:]))
        assert all(nxt - cur <= 256 for cur, nxt in zip(t, t[1:]) if cur >= 512)


@pytest.mark.parametrize("max_seqs,max_tokens,max_model_len", [(8, 64, 512), (256, 8192, 16384), (300, 1000, 4096)])
def test_pick_gives_a_shape_that_holds_the_step(max_seqs, max_tokens, max_model_len):
    buckets = ShapeBuckets(max_seqs, max_tokens, max_model_len)
    shapes = set(buckets.all_shapes())
    g = torch.Generator().manual_seed(0)
    for _ in range(500):
        seqs = int(torch.randint(1, max_seqs + 1, (1,), generator=g))
        qlens = torch.randint(1, 40, (seqs,), generator=g).tolist()
        if torch.rand(1, generator=g) < 0.5:
            qlens = [1] * seqs
        tokens, max_q = sum(qlens), max(qlens)
        max_context = int(torch.randint(max_q, max_model_len + 1, (1,), generator=g))
        shape = buckets.pick(tokens, seqs, max_q, max_context)
        if tokens > max(max_tokens, max_seqs):
            assert shape is None or shape.decode
        if shape is None:
            continue
        assert shape in shapes
        assert shape.num_tokens >= tokens and shape.num_seqs >= seqs and shape.max_seqlen_q >= max_q
        assert shape.decode == (max_q == 1 and seqs <= ShapeBuckets.MAX_DECODE_BATCH)
        if not shape.decode:   # padding sequences cost attention programs: at most 4x (or 16)
            assert shape.num_seqs <= max(16, 4 * seqs)
        # long contexts split the KV range of mixed steps small enough to leave SMs idle
        long = (not shape.decode and max_context >= ShapeBuckets.LONG_CONTEXT
                and shape.num_tokens <= ShapeBuckets.LONG_CONTEXT_MAX_TOKENS)
        few = shape.num_seqs <= ShapeBuckets.FEW_SEQS   # e.g. a prefix hit: more splits
        splits = ShapeBuckets.FEW_SEQS_LONG_CONTEXT_SPLITS if few else ShapeBuckets.LONG_CONTEXT_SPLITS
        assert shape.kv_splits == (splits if long else 0)
    assert any(s.kv_splits for s in shapes) == (max_model_len > ShapeBuckets.LONG_CONTEXT)


def test_short_context_decode_variant_is_picked_only_where_asked(monkeypatch):
    """LLM_SHORT_DECODE_CONTEXT=N: decode steps of at most FEW_SEQS sequences whose longest
    context is at most N tokens get the unsplit variant (kv_splits 1), captured with the rest."""
    monkeypatch.delenv("LLM_SHORT_DECODE_CONTEXT", raising=False)
    default = ShapeBuckets(64, 256, 8192)
    assert all(s.kv_splits == 0 for s in default.all_shapes() if s.decode)
    assert default.pick(1, 1, 1, 300).kv_splits == 0
    monkeypatch.setenv("LLM_SHORT_DECODE_CONTEXT", "512")
    buckets = ShapeBuckets(64, 256, 8192)
    shapes = set(buckets.all_shapes())
    for seqs, context, splits in ((1, 300, 1), (16, 512, 1), (1, 513, 0), (17, 100, 0), (1, 0, 0)):
        shape = buckets.pick(seqs, seqs, 1, context)
        assert shape.decode and shape.kv_splits == splits and shape in shapes, (seqs, context, shape)
    assert not buckets.pick(40, 8, 5, 300).kv_splits   # a prefill step keeps its own rule


def test_layout_slices_tile_the_head():
    shape = StepShape(32, 8, False)
    sl = shape.head_slices()
    covered = sorted(i for s in sl.values() for i in range(s.start, s.stop))
    assert covered == list(range(shape.head_len))


def run_engine(model_dir, padded: bool, chunk: int, short_decode_context: int = 0):
    engine = LLMEngine(EngineConfig(model_dir=str(model_dir), device="cpu", max_num_seqs=8,
                                    max_num_batched_tokens=chunk, num_kv_blocks=256))
    if padded:
        engine.runner.buckets = ShapeBuckets(8, chunk, short_decode_context=short_decode_context)
    shapes = []
    real_run = engine.runner.run

    def spy(batch, *args):
        shapes.append((sum(batch.num_new_tokens), len(batch.seqs), max(batch.num_new_tokens)))
        return real_run(batch, *args)
    engine.runner.run = spy
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=2)
    alone = [engine.generate([p], params)[0] for p in PROMPTS]
    batched = engine.generate(PROMPTS, params)
    assert engine.block_manager.num_used_blocks == 0
    return alone, batched, shapes


@pytest.mark.parametrize("chunk", [16, 64])
def test_padded_steps_give_the_unpadded_results(tiny_model_dir, chunk):
    plain_alone, plain_batched, shapes = run_engine(tiny_model_dir, False, chunk)
    pad_alone, pad_batched, _ = run_engine(tiny_model_dir, True, chunk)
    # the run had prefill-only, mixed (chunked prefill beside decodes) and decode-only steps
    assert any(q > 1 and t > q for t, s, q in shapes) and any(q == 1 for t, s, q in shapes)
    for a, b in zip(plain_alone + plain_batched, pad_alone + pad_batched):
        assert a.token_ids == b.token_ids
        assert a.cumulative_logprob == pytest.approx(b.cumulative_logprob, abs=1e-4)


def test_unsplit_short_context_decode_steps_give_the_unpadded_results(tiny_model_dir):
    """The short-context decode variant (kv_splits 1) through the same padded steps."""
    plain_alone, plain_batched, _ = run_engine(tiny_model_dir, False, 64)
    pad_alone, pad_batched, _ = run_engine(tiny_model_dir, True, 64, short_decode_context=10**6)
    for a, b in zip(plain_alone + plain_batched, pad_alone + pad_batched):
        assert a.token_ids == b.token_ids
        assert a.cumulative_logprob == pytest.approx(b.cumulative_logprob, abs=1e-4)
