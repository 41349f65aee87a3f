"""Asynchronous scheduling (engine.step): step N+1 is scheduled and launched before step N's tokens
are read, its sequences reading their last token on the device.

The oracle is the same engine with `async_scheduling=False`, which reads every step's tokens before
scheduling the next: outputs (text, tokens, log-probabilities, finish reasons) must be identical
request for request, under everything that interacts with a token arriving one call late: stop
tokens and stop strings (a sequence is scheduled once more before its stop is seen), lengths,
min_tokens, seeded sampling, top logprobs, penalties (which fall back to reading first), chunked
prefill, preemption under a tiny KV cache, prefix-cache hits and aborts. `drive` checks the block
books after every step and `engine_factory` that every block came back.
"""
from __future__ import annotations

import random

import pytest
import torch

from engine import EngineConfig, LLMEngine, SamplingParams
from engine_testing import PROMPTS, drive, joined, run_requests


def count_device_fills(engine):
    """How many steps read a token that was still in flight (run got prev_tokens and needed it)."""
    calls = [0]
    orig = engine.runner.run

    def run(batch, prev_tokens=None):
        if prev_tokens is not None and any(len(s.token_ids) < s.num_computed_tokens + n
                                           for s, n in zip(batch.seqs, batch.num_new_tokens)):
            calls[0] += 1
        return orig(batch, prev_tokens)

    engine.runner.run = run
    return calls


def both(engine_factory, model_dir, prompts, params, **kw):
    """(sync results, async results, number of async steps that read in-flight tokens)."""
    sync = run_requests(engine_factory(model_dir, async_scheduling=False, **kw), prompts, params)
    eng = engine_factory(model_dir, async_scheduling=True, **kw)
    fills = count_device_fills(eng)
    return sync, run_requests(eng, prompts, params), fills[0]


def test_greedy_outputs_identical_and_tokens_read_on_the_device(engine_factory, gqa):
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    sync, asyn, fills = both(engine_factory, gqa, PROMPTS, params)
    assert asyn == sync
    assert fills >= 19   # every decode step after the first read its input on the device


def test_stop_tokens_and_stop_strings_discard_the_extra_step(engine_factory, gqa):
    """A sequence that stops on a token read late was scheduled once more; that step's token must
    never appear. Stops are taken from the sync run's own output, mid-generation."""
    free = run_requests(engine_factory(gqa, async_scheduling=False), PROMPTS,
                        SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
    params = []
    for i, (text, toks, _) in enumerate(free):
        if i % 2 == 0:
            params.append(SamplingParams(temperature=0.0, max_tokens=16, stop_token_ids=[toks[5]]))
        else:
            stop = text[len(text) // 2:len(text) // 2 + 2]
            params.append(SamplingParams(temperature=0.0, max_tokens=16, stop=[stop] if stop.strip() else []))
    sync, asyn, _ = both(engine_factory, gqa, PROMPTS, params)
    assert asyn == sync
    assert any(reason == "stop" for _, _, reason in asyn)
    assert all(len(toks) < 16 for (_, toks, reason) in asyn if reason == "stop")


def test_sampling_logprobs_min_tokens_and_penalties(engine_factory, gqa):
    params = [SamplingParams(temperature=0.8, top_p=0.9, top_k=20, seed=7, max_tokens=12, logprobs=3),
              SamplingParams(temperature=0.0, max_tokens=12, min_tokens=6, stop_token_ids=list(range(0, 400))),
              SamplingParams(temperature=0.0, max_tokens=12, repetition_penalty=1.3, frequency_penalty=0.5),
              SamplingParams(temperature=1.0, seed=3, max_tokens=12, presence_penalty=0.7),
              SamplingParams(temperature=0.0, max_tokens=3, logprobs=2, ignore_eos=True)]
    sync_eng = engine_factory(gqa, async_scheduling=False)
    async_eng = engine_factory(gqa, async_scheduling=True)
    for eng in (sync_eng, async_eng):
        for i, (p, sp) in enumerate(zip(PROMPTS, params)):
            eng.add_request(f"r{i}", p, sp)
    sync, asyn = drive(sync_eng), drive(async_eng)
    for rid in sync:
        assert joined(asyn[rid]) == joined(sync[rid]), rid
        assert [o.logprobs for o in asyn[rid]] == [o.logprobs for o in sync[rid]] or \
            [e for o in asyn[rid] for e in (o.logprobs or [])] == [e for o in sync[rid] for e in (o.logprobs or [])]
        assert asyn[rid][-1].cumulative_logprob == pytest.approx(sync[rid][-1].cumulative_logprob, abs=1e-5)
    # min_tokens held the (many) stop tokens back for 6 tokens
    assert len(joined(asyn["r1"])[1]) >= 6


@pytest.mark.parametrize("budget", [16, 48])
def test_chunked_prefill_preemption_and_prefix_hits(engine_factory, gqa, budget):
    """A KV cache too small for everyone forces preemption while tokens are in flight; repeated
    prompts hit the prefix cache; a small budget chunks the prompts."""
    rng = random.Random(budget)
    prompts = [PROMPTS[rng.randrange(len(PROMPTS))] for _ in range(10)]
    params = [SamplingParams(temperature=0.0, max_tokens=rng.randint(4, 30), ignore_eos=rng.random() < 0.5)
              for _ in prompts]
    kw = dict(num_kv_blocks=14, max_num_batched_tokens=budget, max_num_seqs=6)
    sync_eng = engine_factory(gqa, async_scheduling=False, **kw)
    async_eng = engine_factory(gqa, async_scheduling=True, **kw)
    sync = run_requests(sync_eng, prompts, params)
    asyn = run_requests(async_eng, prompts, params)
    assert asyn == sync
    assert async_eng.scheduler.num_preemptions > 0
    assert async_eng.block_manager.prefix_hits > 0


def test_abort_with_a_token_in_flight(engine_factory, gqa):
    eng = engine_factory(gqa, async_scheduling=True)
    eng.add_request("a", PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True))
    eng.add_request("b", PROMPTS[1], SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))
    seen = []
    for _ in range(3):
        seen += eng.step()
    a = eng.seqs["a"]
    assert a.num_pending == 1            # sampled by the last step, not read yet
    out = eng.abort("a")
    assert out.finished and out.finish_reason == "abort"
    assert out.num_output_tokens == len(a.token_ids) - a.num_prompt_tokens == 2
    rest = drive(eng)                    # the in-flight step is read; a's token is dropped
    assert "a" not in rest
    alone = run_requests(engine_factory(gqa, async_scheduling=False), [PROMPTS[1]],
                         SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))
    assert joined([o for o in seen if o.request_id == "b"] + rest["b"]) == alone[0]


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_on_the_gpu_with_cuda_graphs(tiny_model_dir, dtype):
    """Graph replays reading their input tokens from the previous step's device tensor give the
    synchronous engine's outputs. Lengths vary (finishes known ahead); in fp32 stop tokens too,
    which change the next step's batch size (bf16 matmuls of another bucket may round differently)."""
    free = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    results = {}
    for async_scheduling in (False, True):
        engine = LLMEngine(EngineConfig(model_dir=str(tiny_model_dir), device="cuda", dtype=dtype,
                                        async_scheduling=async_scheduling, max_num_seqs=8, num_kv_blocks=512))
        if not results:   # stops from the sync run's own output
            base = [c.token_ids for c in engine.generate(PROMPTS, free)]
        params = [SamplingParams(temperature=0.0, max_tokens=8 + 4 * i, ignore_eos=True) for i in range(len(PROMPTS))]
        if dtype == "float32":
            params[1] = SamplingParams(temperature=0.0, max_tokens=24, stop_token_ids=[base[1][6]])
            params[3] = SamplingParams(temperature=0.7, seed=5, max_tokens=24, logprobs=2)
        results[async_scheduling] = [(c.token_ids, c.text, c.finish_reason) for c in engine.generate(PROMPTS, params)]
        assert engine.block_manager.num_used_blocks == 0
        del engine
        torch.cuda.empty_cache()
    assert results[True] == results[False]


@needs_gpu
@pytest.mark.parametrize("async_scheduling", [True, False])
@pytest.mark.parametrize("enforce_eager", [False, True])
def test_prompt_chunks_with_the_gpu_behind_the_host(tiny_model_dir, async_scheduling, enforce_eager):
    """A long prompt prefilled in chunks, nothing decoding: no step samples, so the host waits for
    the GPU at no step and runs ahead of it. Each step's inputs are packed into one of two pinned
    buffers used in turn; the chunk after next must not overwrite a chunk's inputs before the GPU
    has copied them. The GPU is held back (a spin kernel queued ahead of every step's input copy),
    and the result must be the one of the same engine with nothing held back."""
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)

    def run(hold_gpu_s: float):
        engine = LLMEngine(EngineConfig(model_dir=str(tiny_model_dir), device="cuda", dtype="float32",
                                        async_scheduling=async_scheduling, enforce_eager=enforce_eager,
                                        max_num_seqs=4, max_num_batched_tokens=64, num_kv_blocks=256))
        prompt = engine.tokenize(" ".join(PROMPTS) * 3)[:400]
        assert len(prompt) > 5 * 64   # six chunks without a sampled token
        cycles = int(hold_gpu_s * torch.cuda.get_device_properties(0).clock_rate * 1000)
        run_step = engine.runner.run

        def held_back(*args, **kwargs):
            if hold_gpu_s:
                torch.cuda._sleep(cycles)   # on the stream, before this step's input copy
            return run_step(*args, **kwargs)

        engine.runner.run = held_back
        [out] = engine.generate([prompt], params)
        assert engine.block_manager.num_used_blocks == 0
        del engine
        torch.cuda.empty_cache()
        return out.token_ids

    assert run(0.02) == run(0.0)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_an_engine_on_a_second_gpu_stepped_from_its_loop_thread(tiny_model_dir):
    """The engine thread starts on device 0: the engine must make its own device current there
    (events, streams and Triton launches follow it). Same tokens as the engine's own generate()."""
    from engine import EngineLoop
    from test_loop import Collector

    engine = LLMEngine(EngineConfig(model_dir=str(tiny_model_dir), device="cuda:1", dtype="float32",
                                    max_num_seqs=8, num_kv_blocks=256))
    params = [SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True),
              SamplingParams(temperature=0.8, seed=3, max_tokens=16, ignore_eos=True)]
    expected = [c.token_ids for c in engine.generate(PROMPTS[:2], params)]
    loop = EngineLoop(engine).start()
    try:
        col = Collector()
        for i, p in enumerate(params):
            loop.submit(str(i), PROMPTS[i], p, col.callback(str(i)))
        col.wait(["0", "1"])
        assert [col.result(str(i))[1] for i in range(2)] == expected
    finally:
        loop.shutdown()
