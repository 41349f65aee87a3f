"""EngineLoop: the engine on its own thread, fed from several threads.

The contract tested: every submitted request gets outputs in order whose tokens concatenate to the
same result as running it alone, the last (and only the last) with finished=True; abort and
shutdown end requests with finish_reason "abort" and free their blocks; a failing callback only
costs its own request; a failing step fails every in-flight request and kills the loop.
Outputs may be merged (several tokens per callback), so nothing here assumes one call per token.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest

from engine import EngineDead, EngineLoop, InvalidRequest, QueueFull, SamplingParams
from engine.loop import deliver_outputs
from engine.sequence import ERROR_UNAVAILABLE, RequestOutput
from engine_testing import PROMPTS, joined, run_requests

TIMEOUT = 60.0


class Collector:
    def __init__(self):
        self.lock = threading.Lock()
        self.outs = defaultdict(list)
        self.done = defaultdict(threading.Event)
        self.first = defaultdict(threading.Event)
        self.threads = set()

    def callback(self, rid, hook=None):
        def cb(out):
            assert out.request_id == rid
            with self.lock:
                self.outs[rid].append(out)
                self.threads.add(threading.current_thread().name)
            self.first[rid].set()
            if hook is not None:
                hook(out)
            if out.finished:
                self.done[rid].set()
        return cb

    def wait(self, rids, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        for rid in rids:
            assert self.done[rid].wait(max(0.0, deadline - time.monotonic())), f"{rid} never finished"

    def wait_first(self, rids, timeout=TIMEOUT):
        for rid in rids:
            assert self.first[rid].wait(timeout), f"{rid} never produced output"

    def result(self, rid):
        outs = self.outs[rid]
        counts = [o.num_output_tokens for o in outs]
        assert counts == sorted(counts), "outputs out of order"
        return joined(outs)


def wait_for(pred, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


@pytest.fixture
def loops():
    started = []

    def start(engine):
        loop = EngineLoop(engine).start()
        started.append(loop)
        return loop

    yield start
    for loop in started:
        loop.shutdown()


def greedy(n, **kw):
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)


def test_concurrent_submits_from_several_threads(gqa, engine_factory, loops):
    eng = engine_factory(gqa, max_num_seqs=6, block_size=8)
    loop = loops(eng)
    ids = [eng.tokenize(p) for p in PROMPTS]
    jobs = []
    for t in range(4):
        for j in range(3):
            k = t * 3 + j
            params = (greedy(4 + k) if k % 3 else
                      SamplingParams(temperature=1.0, seed=k, max_tokens=10, ignore_eos=True))
            prompt = ids[k % 5] if k % 2 else PROMPTS[k % 5]       # token ids and text prompts
            jobs.append((f"t{t}-{j}", prompt, params))
    col = Collector()
    lengths = {}
    barrier = threading.Barrier(4)

    def submitter(t):
        barrier.wait()
        for rid, prompt, params in jobs[t * 3:(t + 1) * 3]:
            lengths[rid] = loop.submit(rid, prompt, params, col.callback(rid))

    threads = [threading.Thread(target=submitter, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(TIMEOUT)
    col.wait([rid for rid, _, _ in jobs])
    assert loop.healthy
    ref = engine_factory(gqa)
    for rid, prompt, params in jobs:
        expected = run_requests(ref, [prompt], params, prefix=rid)[0]
        assert col.result(rid) == expected, rid
        assert lengths[rid] == len(ref.tokenize(prompt) if isinstance(prompt, str) else prompt)
        assert col.outs[rid][-1].num_input_tokens == lengths[rid]
    assert "MainThread" not in col.threads                         # delivered off the caller's thread
    wait_for(lambda: loop.num_in_flight == 0)
    assert eng.block_manager.num_used_blocks == 0


def test_abort_frees_blocks_and_ends_with_abort(gqa, engine_factory, loops):
    eng = engine_factory(gqa)
    loop = loops(eng)
    col = Collector()
    loop.submit("long", PROMPTS[1], greedy(400), col.callback("long"))
    loop.submit("other", PROMPTS[0], greedy(8), col.callback("other"))
    col.wait_first(["long"])
    loop.abort("long")
    loop.abort("no-such-request")
    col.wait(["long", "other"])
    text, toks, reason = col.result("long")
    assert reason == "abort" and 0 < len(toks) < 400
    assert col.result("other")[2] == "length"
    assert sum(o.finished for o in col.outs["long"]) == 1
    wait_for(lambda: not eng.has_unfinished())
    assert eng.block_manager.num_used_blocks == 0
    assert loop.healthy
    # abort right after submit, before or after the request has started
    loop.submit("early", PROMPTS[2], greedy(400), col.callback("early"))
    loop.abort("early")
    col.wait(["early"])
    assert col.result("early")[2] == "abort"
    wait_for(lambda: eng.block_manager.num_used_blocks == 0 and not eng.has_unfinished())
    time.sleep(0.1)
    assert sum(o.finished for o in col.outs["early"]) == 1


def test_raising_callback_aborts_only_its_own_request(gqa, engine_factory, loops):
    eng = engine_factory(gqa, max_model_len=2048)
    aborted = []
    orig_abort = eng.abort

    def abort(rid):
        out = orig_abort(rid)
        aborted.append((rid, out))
        return out

    eng.abort = abort
    loop = loops(eng)
    col = Collector()
    calls = []

    def bad(out):
        calls.append(out)
        raise ConnectionError("client went away")

    loop.submit("bad", PROMPTS[1], greedy(1900), bad)
    loop.submit("b", PROMPTS[2], greedy(12), col.callback("b"))
    loop.submit("c", PROMPTS[3], greedy(20), col.callback("c"))
    col.wait(["b", "c"])
    wait_for(lambda: "bad" not in eng.seqs)
    wait_for(lambda: not eng.has_unfinished())
    time.sleep(0.2)
    assert len(calls) == 1, "the failed receiver must not be called again"
    # the request was aborted (its blocks freed) long before it could have finished
    [(rid, out)] = aborted
    assert rid == "bad" and out.finish_reason == "abort" and out.num_output_tokens < 1900
    assert eng.block_manager.num_used_blocks == 0
    ref = engine_factory(gqa)
    assert col.result("b") == run_requests(ref, [PROMPTS[2]], greedy(12))[0]
    assert col.result("c") == run_requests(ref, [PROMPTS[3]], greedy(20))[0]
    assert loop.healthy
    # the loop still serves new requests
    loop.submit("d", PROMPTS[0], greedy(3), col.callback("d"))
    col.wait(["d"])
    assert col.result("d")[2] == "length"


def test_fatal_step_error_fails_every_request_and_kills_the_loop(gqa, engine_factory, loops):
    eng = engine_factory(gqa)
    orig = eng.runner.run
    fail, entered, release = threading.Event(), threading.Event(), threading.Event()

    def run(batch, *args):
        if fail.is_set():
            entered.set()
            release.wait(TIMEOUT)
            raise RuntimeError("boom: device lost")
        return orig(batch, *args)

    eng.runner.run = run
    loop = loops(eng)
    col = Collector()
    for rid, p in (("a", PROMPTS[0]), ("b", PROMPTS[1]), ("c", PROMPTS[2])):
        loop.submit(rid, p, greedy(300), col.callback(rid))
    col.wait_first(["a", "b", "c"])
    fail.set()
    assert entered.wait(TIMEOUT)                     # the engine thread is inside the failing step
    loop.submit("queued", PROMPTS[3], greedy(5), col.callback("queued"))   # not yet in the engine
    release.set()
    col.wait(["a", "b", "c", "queued"])
    for rid in ("a", "b", "c", "queued"):
        outs = col.outs[rid]
        assert sum(o.finished for o in outs) == 1 and outs[-1].finished
        assert outs[-1].finish_reason == "error" and outs[-1].error_kind == ERROR_UNAVAILABLE
        assert outs[-1].error.startswith("the engine has stopped: engine step failed: RuntimeError: boom: device lost")
    wait_for(lambda: not loop.healthy)
    assert "boom" in loop.fatal_error
    with pytest.raises(EngineDead):
        loop.submit("late", PROMPTS[0], greedy(3), col.callback("late"))
    time.sleep(0.1)
    assert not col.outs["late"]
    # the dead engine still holds the failed batch; release it so the block check can run
    loop.shutdown()
    for rid in list(eng.seqs):
        eng.abort(rid)


def test_shutdown_aborts_in_flight_requests(gqa, engine_factory, loops):
    eng = engine_factory(gqa)
    loop = loops(eng)
    col = Collector()
    rids = ["x", "y", "z"]
    for rid, p in zip(rids, PROMPTS):
        loop.submit(rid, p, greedy(400), col.callback(rid))
    col.wait_first(rids)
    loop.shutdown()
    col.wait(rids, timeout=5)
    for rid in rids:
        text, toks, reason = col.result(rid)
        assert reason == "abort" and len(toks) < 400
    assert not loop.healthy
    with pytest.raises(EngineDead):
        loop.submit("after", PROMPTS[0], greedy(3), col.callback("after"))
    assert not eng.seqs and eng.block_manager.num_used_blocks == 0


def test_submit_validates_in_the_callers_thread(gqa, engine_factory, loops):
    eng = engine_factory(gqa, max_model_len=64)
    loop = loops(eng)
    col = Collector()
    with pytest.raises(InvalidRequest) as err:
        loop.submit("long", list(range(10, 80)), greedy(3), col.callback("long"))
    assert err.value.field == "text_input"
    with pytest.raises(InvalidRequest) as err:
        loop.submit("toolong", list(range(10, 50)), greedy(30), col.callback("toolong"))
    assert err.value.field == "max_tokens"
    vocab = eng.model_config.vocab_size
    for bad_ids in ([5, vocab, 7], [5, -1]):   # outside the embedding table: would fail the step for all
        with pytest.raises(InvalidRequest) as err:
            loop.submit("oov", bad_ids, greedy(3), col.callback("oov"))
        assert err.value.field == "text_input" and str(vocab) in str(err.value)
    assert loop.num_in_flight == 0 and loop.healthy
    n = loop.submit("ok", "Once upon a time", greedy(3), col.callback("ok"))
    assert n == len(eng.tokenize("Once upon a time"))
    col.wait(["ok"])
    assert not col.outs["long"] and not col.outs["toolong"] and not col.outs["oov"]


def test_queue_full_while_the_engine_is_busy(gqa, engine_factory, loops):
    eng = engine_factory(gqa, max_waiting_requests=2)
    orig = eng.runner.run
    entered, release = threading.Event(), threading.Event()

    def run(batch, *args):
        entered.set()
        release.wait(TIMEOUT)
        return orig(batch, *args)

    eng.runner.run = run
    loop = loops(eng)
    col = Collector()
    loop.submit("first", PROMPTS[0], greedy(3), col.callback("first"))
    assert entered.wait(TIMEOUT)                      # the engine thread is stuck in a step
    loop.submit("q1", PROMPTS[1], greedy(3), col.callback("q1"))
    loop.submit("q2", PROMPTS[2], greedy(3), col.callback("q2"))
    with pytest.raises(QueueFull):
        loop.submit("q3", PROMPTS[3], greedy(3), col.callback("q3"))
    release.set()
    col.wait(["first", "q1", "q2"])
    for rid in ("first", "q1", "q2"):
        assert col.result(rid)[2] == "length"
    assert not col.outs["q3"]


def test_duplicate_request_id_fails_only_the_duplicate(gqa, engine_factory, loops):
    eng = engine_factory(gqa)
    loop = loops(eng)
    first, dup = Collector(), Collector()
    slow = lambda out: time.sleep(0.05)                # a receiver that keeps delivery busy
    loop.submit("same", PROMPTS[1], greedy(30), first.callback("same", hook=slow))
    first.wait_first(["same"])
    loop.submit("same", PROMPTS[0], greedy(3), dup.callback("same"))
    dup.wait(["same"], timeout=20)
    assert [o.finish_reason for o in dup.outs["same"]] == ["error"]
    assert "already" in dup.outs["same"][0].error
    first.wait(["same"])
    ref = engine_factory(gqa)
    assert first.result("same") == run_requests(ref, [PROMPTS[1]], greedy(30))[0]


def test_a_failed_receiver_does_not_swallow_a_refused_duplicates_error():
    """deliver_outputs drops the outputs of a receiver whose callback raised until its final one,
    but a receiver is the id and its callback: a duplicate of that id, refused by the engine
    while the first one's abort is on its way, must still get its error (keyed by id alone, the
    refusal was dropped and the failed receiver was called again with the abort)."""
    first_calls, dup_calls, aborted = [], [], []

    def first(out):
        first_calls.append(out)
        raise ConnectionError("client went away")

    def out(finished, reason=None, error=None):
        return RequestOutput("same", "x", [7], finished, reason, error=error)

    dead = set()
    deliver_outputs([(first, out(False))], dead, aborted.append, yield_gil=False)
    assert aborted == ["same"] and len(first_calls) == 1
    refusal = out(True, "error", "'same' is already running")
    deliver_outputs([(dup_calls.append, refusal), (first, out(False)), (first, out(True, "abort"))],
                    dead, aborted.append, yield_gil=False)
    assert dup_calls == [refusal]
    assert len(first_calls) == 1, "the failed receiver must not be called again"
    assert not dead, "the mark goes with the failed receiver's final output"


def test_submit_many_queues_each_request_or_returns_its_error(gqa, engine_factory, loops):
    eng = engine_factory(gqa)
    loop = loops(eng)
    col = Collector()
    results = loop.submit_many([("a", PROMPTS[0], greedy(8), col.callback("a")),
                                ("long", PROMPTS[1], greedy(10_000), col.callback("long")),
                                ("b", PROMPTS[2], greedy(8), col.callback("b"))])
    assert results[0] == len(eng.tokenize(PROMPTS[0])) and results[2] == len(eng.tokenize(PROMPTS[2]))
    assert isinstance(results[1], InvalidRequest) and results[1].field == "max_tokens"
    col.wait(["a", "b"])
    assert [col.result("a"), col.result("b")] == run_requests(engine_factory(gqa), [PROMPTS[0], PROMPTS[2]], greedy(8))
    assert "long" not in col.outs   # refused up front: no output
    # an unexpected error for one request (here its tokenizer call) is that request's result only
    real_tokenize = eng.tokenize
    eng.tokenize = lambda p: (_ for _ in ()).throw(RuntimeError("tokenizer broke")) if p == "boom" else real_tokenize(p)
    results = loop.submit_many([("c", PROMPTS[0], greedy(4), col.callback("c")),
                                ("boom", "boom", greedy(4), col.callback("boom"))])
    assert results[0] == len(eng.tokenize(PROMPTS[0])) and isinstance(results[1], RuntimeError)
    col.wait(["c"])
    assert col.result("c")[2] == "length" and "boom" not in col.outs
    loop.shutdown()
    assert all(isinstance(r, EngineDead) for r in loop.submit_many([("d", PROMPTS[0], greedy(4), col.callback("d"))]))
