"""Scheduler behaviour through the real engine: continuous batching, chunked prefill, preemption,
prefix caching, FCFS admission, limits and up-front refusal of requests that could never fit.

Every engine comes from `engine_factory`, whose teardown asserts that all KV blocks were returned
(num_used_blocks == 0) and the block books are consistent; `drive` also checks them after every step.
"""
from __future__ import annotations

import random

import pytest

from engine import InvalidRequest, QueueFull, SamplingParams
from engine.scheduler import chunk_pairs, longest_chunk
from engine_testing import GREEDY, PROMPTS, block_invariants, drive, joined, run_requests


def record_batches(engine):
    """Wrap scheduler.schedule: returns a list of dicts, one per step."""
    log = []
    orig = engine.scheduler.schedule

    def schedule():
        batch = orig()
        log.append(dict(
            seqs=[(s.request_id, n, s.num_computed_tokens) for s, n in zip(batch.seqs, batch.num_new_tokens)],
            preempted=[s.request_id for s in batch.preempted],
            running=len(engine.scheduler.running),
            waiting=[s.request_id for s in engine.scheduler.waiting],
            free=engine.block_manager.num_free_blocks))
        return batch

    engine.scheduler.schedule = schedule
    return log


@pytest.fixture
def ids(gqa, engine_factory):
    tok = engine_factory(gqa).tokenize
    return [tok(p) for p in PROMPTS]


def alone(engine_factory, model_dir, prompt, params):
    [res] = run_requests(engine_factory(model_dir), [prompt], params)
    return res


def greedy(n):
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


# ----- continuous batching ------------------------------------------------------------------------
@pytest.mark.parametrize("async_scheduling", [False, True])
def test_request_added_midway_joins_next_step_and_finished_ones_leave(gqa, ids, engine_factory, async_scheduling):
    eng = engine_factory(gqa, async_scheduling=async_scheduling)
    log = record_batches(eng)
    a = eng.add_request("a", ids[1], greedy(6))
    outs = {"a": [], "b": []}
    for _ in range(3):
        for o in eng.step():
            outs[o.request_id].append(o)
    b = eng.add_request("b", ids[2], greedy(10))
    for o in eng.step():
        outs[o.request_id].append(o)
    # b joined the very next step, prefilled beside a's single decode token
    assert log[-1]["seqs"] == [("a", 1, len(ids[1]) + 2), ("b", len(ids[2]), 0)]
    # Its first token is read in that step's call, or (asynchronous) in the next one.
    assert len(outs["b"]) == (0 if async_scheduling else 1)
    while eng.has_unfinished():
        step_outs = eng.step()
        for o in step_outs:
            outs[o.request_id].append(o)
        block_invariants(eng)
        if a.finished:
            assert a not in eng.scheduler.running and "a" not in eng.seqs
            assert a.block_table == []
            assert eng.block_manager.num_used_blocks == len(b.block_table) or b.finished
    a_steps = [i for i, st in enumerate(log) if any(r == "a" for r, _, _ in st["seqs"])]
    b_steps = [i for i, st in enumerate(log) if any(r == "b" for r, _, _ in st["seqs"])]
    assert len(a_steps) == 6 and len(b_steps) == 10
    assert max(a_steps) < max(b_steps)
    assert all(("a" not in [r for r, _, _ in log[i]["seqs"]]) for i in range(max(a_steps) + 1, len(log)))
    assert joined(outs["a"])[1] == alone(engine_factory, gqa, ids[1], greedy(6))[1]
    assert joined(outs["b"])[1] == alone(engine_factory, gqa, ids[2], greedy(10))[1]


def test_many_requests_arriving_over_time_match_running_alone(gqa, ids, engine_factory):
    eng = engine_factory(gqa, block_size=8)
    arrivals = {0: [0, 1], 2: [2], 3: [3], 9: [4]}
    params = [greedy(5 + 3 * i) for i in range(5)]
    outs = {}
    step = 0
    while step < 200:
        for i in arrivals.get(step, []):
            eng.add_request(f"r{i}", ids[i], params[i])
        for o in eng.step():
            outs.setdefault(o.request_id, []).append(o)
        block_invariants(eng)
        step += 1
        if step > max(arrivals) and not eng.has_unfinished():
            break
    for i in range(5):
        text, toks, reason = joined(outs[f"r{i}"])
        exp = alone(engine_factory, gqa, ids[i], params[i])
        assert (text, toks, reason) == exp


# ----- chunked prefill ----------------------------------------------------------------------------
def long_prompt(ids, n=100):
    out = ids[4] + ids[2][1:]
    assert len(out) >= n
    return out[:n]


def test_chunked_prefill_matches_unchunked_and_decodes_continue(gqa, ids, engine_factory):
    prompt = long_prompt(ids)
    short = ids[0]
    eng = engine_factory(gqa, max_num_batched_tokens=16, max_num_seqs=4)
    log = record_batches(eng)
    eng.add_request("short", short, greedy(20))
    outs = {"short": [], "long": []}
    for _ in range(2):
        for o in eng.step():
            outs[o.request_id].append(o)
    long_seq = eng.add_request("long", prompt, greedy(12))
    start = len(log)
    rest = drive(eng)
    for rid, lst in rest.items():
        outs[rid].extend(lst)

    assert all(sum(n for _, n, _ in st["seqs"]) <= 16 for st in log)
    prefill_steps = [st for st in log[start:] if any(r == "long" and c < len(prompt) for r, _, c in st["seqs"])]
    assert len(prefill_steps) >= 7                       # 100 tokens in chunks of at most 15
    chunks = [n for st in prefill_steps for r, n, c in st["seqs"] if r == "long"]
    assert sum(chunks) == len(prompt)
    for st in prefill_steps:                             # the short request kept decoding
        assert ("short", 1) in [(r, n) for r, n, _ in st["seqs"]]
    assert long_seq.num_cached_prompt_tokens == 0

    unchunked = run_requests(engine_factory(gqa), [short, prompt], [greedy(20), greedy(12)])
    assert joined(outs["short"]) == unchunked[0]
    assert joined(outs["long"]) == unchunked[1]


def test_chunked_prefill_alone_equals_unchunked(gqa, ids, engine_factory):
    prompt = long_prompt(ids)
    for budget in (16, 7, 33):
        eng = engine_factory(gqa, max_num_batched_tokens=budget, max_num_seqs=1, block_size=8)
        log = record_batches(eng)
        res = run_requests(eng, [prompt], GREEDY)
        assert res == [alone(engine_factory, gqa, prompt, GREEDY)]
        assert max(n for st in log for _, n, _ in st["seqs"]) == budget


# ----- attention budget of prefill chunks --------------------------------------------------------
def test_chunk_pairs_and_longest_chunk_against_brute_force():
    rng = random.Random()
    for _ in range(300):
        context, remaining = rng.randrange(0, 5000), rng.randrange(1, 400)
        pairs = rng.randrange(0, 400 * 5400)
        best, total = 0, 0
        for n in range(1, remaining + 1):
            total += context + n              # the n-th new token attends to everything before it and itself
            if total > pairs:
                break
            best = n
        assert chunk_pairs(context, best) <= pairs
        assert longest_chunk(context, remaining, pairs) == best, (context, remaining, pairs)


def test_prefill_chunks_shrink_as_their_context_grows_and_decodes_continue(gqa, ids, engine_factory):
    prompt = ((ids[4] + ids[2][1:] + ids[3][1:]) * 8)[:400]
    assert len(prompt) == 400
    budget, pairs = 64, 64 * 32
    eng = engine_factory(gqa, max_num_batched_tokens=budget, max_num_seqs=4, block_size=8,
                         max_prefill_attention_pairs=pairs)
    log = record_batches(eng)
    outs = {"short": [], "long": []}
    eng.add_request("short", ids[0], greedy(100))
    for o in eng.step():
        outs[o.request_id].append(o)
    eng.add_request("long", prompt, greedy(8))
    for rid, lst in drive(eng).items():
        outs[rid].extend(lst)

    prefill_steps = [st for st in log if any(r == "long" and c < len(prompt) for r, _, c in st["seqs"])]
    chunks = [(c, n) for st in prefill_steps for r, n, c in st["seqs"] if r == "long"]
    assert sum(n for _, n in chunks) == len(prompt)
    for c, n in chunks:   # within the pair budget, or the one block that guarantees progress
        assert chunk_pairs(c, n) <= pairs or n == min(8, len(prompt) - c), (c, n)
    assert chunks[0][1] == budget - 1 and chunks[-2][1] == 8, chunks   # long at the start, a block at the end
    assert all(b[1] <= a[1] for a, b in zip(chunks, chunks[1:])), chunks
    assert len(prefill_steps) < 100
    for st in prefill_steps:   # the short request decoded in every step of the long prefill
        assert ("short", 1) in [(r, n) for r, n, _ in st["seqs"]], st
    # Same text as without the pair budget (token-budget chunks only) and as alone.
    unlimited = engine_factory(gqa, max_num_batched_tokens=budget, max_num_seqs=4, block_size=8,
                               max_prefill_attention_pairs=0)
    log0 = record_batches(unlimited)
    ref = run_requests(unlimited, [ids[0], prompt], [greedy(100), greedy(8)])
    # (without it the whole prompt goes in token-budget chunks: 400 tokens in about 7 steps)
    assert sum(1 for st in log0 for _, n, _ in st["seqs"] if n >= budget - 1) >= 5
    assert [joined(outs["short"]), joined(outs["long"])] == ref
    assert joined(outs["long"]) == alone(engine_factory, gqa, prompt, greedy(8))


def test_default_attention_budget_leaves_ordinary_chunks_alone(gqa, ids, engine_factory):
    """max_num_batched_tokens x 2048 pairs: a chunk only shrinks past ~2k tokens of context."""
    eng = engine_factory(gqa, max_num_batched_tokens=64, max_num_seqs=4)
    assert eng.scheduler.attention_budget == 64 * 2048
    log = record_batches(eng)
    run_requests(eng, [long_prompt(ids)], GREEDY)
    assert log[0]["seqs"][0][1] == 64


# ----- preemption ---------------------------------------------------------------------------------
def test_preemption_completes_every_request_with_identical_output(gqa, ids, engine_factory):
    prompts = [ids[4][:30], ids[2][:25], ids[1][:40], ids[0], ids[3][:20]]
    params = [greedy(24), greedy(24), greedy(24),
              SamplingParams(temperature=0.9, seed=11, max_tokens=24, ignore_eos=True),
              SamplingParams(temperature=1.0, top_p=0.9, seed=12, max_tokens=24, ignore_eos=True)]
    expected = [alone(engine_factory, gqa, p, sp) for p, sp in zip(prompts, params)]
    for caching in (True, False):
        eng = engine_factory(gqa, num_kv_blocks=12, block_size=8, enable_prefix_caching=caching)
        assert sum(len(p) + 24 for p in prompts) > eng.kv_capacity_tokens
        log = record_batches(eng)
        seqs = [eng.add_request(f"r{i}", p, sp) for i, (p, sp) in enumerate(zip(prompts, params))]
        outs = drive(eng)
        assert eng.scheduler.num_preemptions > 0
        assert sum(s.preemptions for s in seqs) == eng.scheduler.num_preemptions
        assert any(st["preempted"] for st in log)
        for st in log:   # nothing is admitted in a step that had to preempt (no evict/re-admit churn)
            if st["preempted"]:
                assert all(computed > 0 for _, _, computed in st["seqs"]), st
        for i in range(len(prompts)):
            assert joined(outs[f"r{i}"]) == expected[i], f"request {i} (prefix caching {caching})"


def test_a_token_in_flight_that_ends_its_request_preempts_nobody(gqa, ids, engine_factory):
    """Asynchronous scheduling schedules a sequence once more while its last token is in flight.
    When that token ends it (a stop token here) and the extra step needed a new block, no other
    request may be preempted for it: the KV cache holds exactly what both requests compute when
    run one step at a time, so any preemption recomputes a context for nothing."""
    block = 4
    first = alone(engine_factory, gqa, ids[0], greedy(16))[1]
    # A stop position whose token is new, and whose extra in-flight step crosses a block boundary.
    j = next(j for j in range(1, 16) if first[j] not in first[:j] and (len(ids[0]) + j) % block == 0)
    stop_at = SamplingParams(temperature=0.0, max_tokens=j + 2, stop_token_ids=[first[j]])
    # Step 1 prefills both; step j + 2 is the extra one, where "other" computes position
    # len(other) + j. The cache is full then: nothing is free for "stops" to grow into.
    other_prompt = next(ids[1][:n] for n in range(9, 30) if (n + j) % block)
    blocks = -(-(len(ids[0]) + j) // block) + -(-(len(other_prompt) + j + 1) // block)
    other_new = block * blocks - len(other_prompt)   # it fits alone once "stops" is done
    expected_other = alone(engine_factory, gqa, other_prompt, greedy(other_new))
    for async_scheduling in (False, True):
        eng = engine_factory(gqa, num_kv_blocks=blocks, block_size=block, async_scheduling=async_scheduling,
                             enable_prefix_caching=False)
        eng.add_request("stops", ids[0], stop_at)
        eng.add_request("other", other_prompt, greedy(other_new))
        outs = drive(eng)
        assert joined(outs["stops"])[1] == first[:j + 1]
        assert joined(outs["other"]) == expected_other
        assert eng.scheduler.num_preemptions == 0, f"async_scheduling={async_scheduling}"


def test_preempted_request_is_recomputed_from_the_front_of_the_queue(gqa, ids, engine_factory):
    eng = engine_factory(gqa, num_kv_blocks=6, block_size=8)   # 48 tokens
    log = record_batches(eng)
    eng.add_request("old", ids[0], greedy(30))                  # 7 + 30 tokens
    eng.add_request("new", ids[0][:5], greedy(30))
    outs = drive(eng)
    first_preempt = next(i for i, st in enumerate(log) if st["preempted"])
    assert log[first_preempt]["preempted"] == ["new"]            # the most recently admitted goes
    assert log[first_preempt]["waiting"][0] == "new"
    assert joined(outs["old"]) == alone(engine_factory, gqa, ids[0], greedy(30))
    assert joined(outs["new"]) == alone(engine_factory, gqa, ids[0][:5], greedy(30))


# ----- prefix caching -----------------------------------------------------------------------------
def test_prefix_cache_hit_gives_identical_output(gqa, ids, engine_factory):
    prefix = ids[4][:48]
    a = prefix + ids[1][1:12]
    b = prefix + ids[2][1:9]
    params = greedy(16)
    cold = alone(engine_factory, gqa, b, params)
    off_eng = engine_factory(gqa, enable_prefix_caching=False)
    run_requests(off_eng, [a], params, prefix="a")
    seq_off = off_eng.add_request("b", b, params)
    off = joined(drive(off_eng)["b"])
    assert seq_off.num_cached_prompt_tokens == 0

    # a finished (its blocks are free but cached) before b arrives
    eng = engine_factory(gqa)
    run_requests(eng, [a], params, prefix="a")
    seq = eng.add_request("b", b, params)
    warm = joined(drive(eng)["b"])
    assert seq.num_cached_prompt_tokens == 48
    assert warm == cold == off

    # a still running (its blocks shared, ref count 2) when b arrives
    eng = engine_factory(gqa)
    eng.add_request("a", a, params)
    outs = {"a": []}
    for o in eng.step():
        outs["a"].append(o)
    seq = eng.add_request("b", b, params)
    cached = eng.block_manager.find_cached_prefix(seq)
    assert len(cached) == 3 and all(eng.block_manager.ref_counts[x] == 1 for x in cached)
    rest = drive(eng, on_step=lambda n, _: n == 0 and shared_refs(eng, cached))
    assert seq.num_cached_prompt_tokens == 48
    assert joined(rest["b"]) == cold
    assert joined(outs["a"] + rest["a"]) == alone(engine_factory, gqa, a, params)


def shared_refs(eng, blocks):
    assert all(eng.block_manager.ref_counts[x] == 2 for x in blocks)


def test_prefix_hit_on_a_prompt_still_in_chunked_prefill(gqa, ids, engine_factory):
    """Blocks computed by the first chunks of a long prompt serve a second request while the first
    is still prefilling."""
    long_ = long_prompt(ids)
    other = long_[:64] + ids[3][1:20]
    eng = engine_factory(gqa, max_num_batched_tokens=16, max_num_seqs=4)
    a = eng.add_request("a", long_, greedy(8))
    outs = {"a": [], "b": []}
    for _ in range(4):                                   # 4 chunks of 16 = 64 tokens computed
        assert not eng.step()
    assert a.num_computed_tokens == 64
    b = eng.add_request("b", other, greedy(8))
    rest = drive(eng)
    for rid in rest:
        outs[rid] += rest[rid]
    assert b.num_cached_prompt_tokens == 64
    assert joined(outs["b"]) == alone(engine_factory, gqa, other, greedy(8))
    assert joined(outs["a"]) == alone(engine_factory, gqa, long_, greedy(8))


def test_identical_prompt_repeated_hits_all_but_the_last_token(gqa, ids, engine_factory):
    eng = engine_factory(gqa)
    prompt = ids[4][:64]                                          # exactly 4 blocks
    first = run_requests(eng, [prompt], greedy(8), prefix="x")
    seq = eng.add_request("again", prompt, greedy(8))
    again = joined(drive(eng)["again"])
    assert seq.num_cached_prompt_tokens == 48                     # the last block is recomputed
    assert [again] == first
    seq = eng.add_request("longer", prompt + [7], greedy(8))
    drive(eng)
    assert seq.num_cached_prompt_tokens == 64


def test_prefix_hits_after_generated_tokens_are_cached(gqa, ids, engine_factory):
    """Blocks completed during decode are cached too: a follow-up turn that contains the first
    request's prompt and output hits them."""
    eng = engine_factory(gqa, block_size=8)
    [(_, toks, _)] = run_requests(eng, [ids[1]], greedy(20), prefix="turn1")
    follow = ids[1] + toks + ids[0][1:]
    seq = eng.add_request("turn2", follow, greedy(6))
    res = joined(drive(eng)["turn2"])
    assert seq.num_cached_prompt_tokens == (len(ids[1]) + 19) // 8 * 8
    assert res == alone(engine_factory, gqa, follow, greedy(6))


# ----- admission order and limits -----------------------------------------------------------------
def test_fcfs_with_one_slot(gqa, ids, engine_factory):
    eng = engine_factory(gqa, max_num_seqs=1)
    log = record_batches(eng)
    for i in range(4):
        eng.add_request(f"r{i}", ids[i], greedy(3))
    drive(eng)
    order = []
    for st in log:
        assert len(st["seqs"]) <= 1 and st["running"] <= 1
        for rid, _, _ in st["seqs"]:
            if not order or order[-1] != rid:
                order.append(rid)
    assert order == ["r0", "r1", "r2", "r3"]


def test_fcfs_head_of_line_is_not_overtaken(gqa, ids, engine_factory):
    eng = engine_factory(gqa, num_kv_blocks=8, block_size=16)    # 128 tokens
    log = record_batches(eng)
    eng.add_request("A", ids[4][:60], greedy(40))                  # up to 100 tokens: 7 blocks
    eng.add_request("B", ids[2][:70], greedy(10))                  # needs 5 blocks to start
    eng.add_request("C", ids[0][:5], greedy(5))                    # 1 block: would fit at once
    outs = drive(eng)
    first = {rid: next(i for i, st in enumerate(log) if any(r == rid for r, _, _ in st["seqs"]))
             for rid in "ABC"}
    assert first["A"] == 0
    assert first["C"] >= first["B"] > 0
    # C waited although a block was free for it: FCFS, not best fit
    assert any(st["free"] >= 1 and "C" in st["waiting"] for st in log[:first["B"]])
    for rid in "ABC":
        assert joined(outs[rid])[2] == "length"


def test_max_num_seqs_respected(gqa, ids, engine_factory):
    eng = engine_factory(gqa, max_num_seqs=2, block_size=8)
    log = record_batches(eng)
    params = [greedy(4 + i) for i in range(5)]
    res = run_requests(eng, ids, params)
    assert all(len(st["seqs"]) <= 2 and st["running"] <= 2 for st in log)
    assert max(len(st["seqs"]) for st in log) == 2
    for i in range(5):
        assert res[i] == alone(engine_factory, gqa, ids[i], params[i])


def test_max_num_batched_tokens_respected(gqa, ids, engine_factory):
    eng = engine_factory(gqa, max_num_batched_tokens=40, max_num_seqs=8)
    log = record_batches(eng)
    run_requests(eng, ids, greedy(6))
    assert all(sum(n for _, n, _ in st["seqs"]) <= 40 for st in log)
    assert max(sum(n for _, n, _ in st["seqs"]) for st in log) == 40


def test_queue_full(gqa, ids, engine_factory):
    eng = engine_factory(gqa, max_waiting_requests=2)
    eng.add_request("a", ids[0], greedy(3))
    eng.add_request("b", ids[1], greedy(3))
    with pytest.raises(QueueFull):
        eng.add_request("c", ids[2], greedy(3))
    assert "c" not in eng.seqs and len(eng.scheduler.waiting) == 2
    eng.step()                                       # both admitted: the queue has room again
    assert not eng.scheduler.waiting
    eng.add_request("c", ids[2], greedy(3))
    outs = drive(eng)
    assert sorted(outs) == ["a", "b", "c"]


# ----- refusal of requests that can never complete ------------------------------------------------
def test_requests_that_cannot_fit_are_refused_naming_the_field(gqa, engine_factory):
    eng = engine_factory(gqa, max_model_len=64, num_kv_blocks=16, block_size=16)
    cases = [
        (list(range(10, 74)), greedy(1), "text_input"),             # prompt == max_model_len
        (list(range(10, 90)), greedy(1), "text_input"),             # prompt > max_model_len
        ([], greedy(1), "text_input"),                              # empty
        (list(range(10, 50)), greedy(25), "max_tokens"),            # 40 + 25 > 64
        (list(range(10, 73)), greedy(2), "max_tokens"),             # 63 + 2 > 64
        (list(range(10, 20)), SamplingParams(stop_token_ids=[5, 10**6]), "stop_token_ids"),
    ]
    for prompt, params, field in cases:
        with pytest.raises(InvalidRequest) as err:
            eng.add_request(f"x{len(prompt)}", prompt, params)
        assert err.value.field == field, (len(prompt), err.value)
    assert not eng.seqs and not eng.scheduler.waiting
    # the limits themselves are allowed
    res = run_requests(eng, [list(range(10, 73)), list(range(10, 50))], [greedy(1), greedy(24)])
    assert [len(t) for _, t, _ in res] == [1, 24]

    # KV capacity smaller than max_model_len
    small = engine_factory(gqa, max_model_len=512, num_kv_blocks=4, block_size=16)   # 64 tokens
    with pytest.raises(InvalidRequest) as err:
        small.add_request("big", list(range(10, 50)), greedy(30))
    assert err.value.field == "max_tokens" and "KV cache" in str(err.value)
    [(_, t, r)] = run_requests(small, [list(range(10, 50))], greedy(24))
    assert len(t) == 24 and r == "length"


def test_duplicate_request_id_refused(gqa, ids, engine_factory):
    eng = engine_factory(gqa)
    eng.add_request("same", ids[0], greedy(3))
    with pytest.raises(InvalidRequest) as err:
        eng.add_request("same", ids[1], greedy(3))
    assert err.value.field == "request_id"
    outs = drive(eng)
    assert joined(outs["same"]) == alone(engine_factory, gqa, ids[0], greedy(3))


def test_max_model_len_caps_generation(gqa, ids, engine_factory):
    eng = engine_factory(gqa, max_model_len=20)
    [(_, toks, reason)] = run_requests(eng, [ids[0]], greedy(13))
    assert len(toks) == 13 and reason == "length"


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_abort_waiting_and_running_requests_frees_blocks(gqa, ids, engine_factory, async_scheduling):
    eng = engine_factory(gqa, max_num_seqs=1, async_scheduling=async_scheduling)
    eng.add_request("run", ids[1], greedy(50))
    eng.add_request("wait", ids[2], greedy(50))
    eng.step()
    eng.step()
    assert eng.block_manager.num_used_blocks > 0
    out = eng.abort("wait")
    assert out.finished and out.finish_reason == "abort" and out.token_ids == []
    out = eng.abort("run")
    # Two steps sampled two tokens; with asynchronous scheduling the second is still unread and
    # is dropped with the request.
    assert out.finished and out.finish_reason == "abort"
    assert out.num_output_tokens == (1 if async_scheduling else 2)
    assert eng.abort("run") is None and eng.abort("never") is None
    assert eng.block_manager.num_used_blocks == 0 and not eng.has_unfinished()
    block_invariants(eng)


def test_generate_with_a_refused_prompt_leaves_nothing_queued(gqa, engine_factory):
    """generate() queues its prompts one by one: when a later one is refused, the earlier ones
    must not stay queued for nobody, holding KV blocks and the ids the next call reuses (the
    factory's teardown checks the blocks)."""
    eng = engine_factory(gqa, max_model_len=64)
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    with pytest.raises(InvalidRequest, match="max_model_len"):
        eng.generate([[5, 6, 7], list(range(10, 80))], params)
    assert not eng.has_unfinished() and not eng.seqs
    [done] = eng.generate([[5, 6, 7]], params)
    assert done.finish_reason == "length" and len(done.token_ids) == 4
