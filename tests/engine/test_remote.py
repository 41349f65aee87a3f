"""RemoteEngineLoop: the engine in its own process, behind EngineLoop's interface.

Same contract as tests/engine/test_loop.py, across a real child process (`python3 -m engine.remote`
over a local socket): outputs equal the in-process engine's, submit raises the same errors, aborts
and shutdown end requests, and when the child process dies (killed, or a fatal step) every request
in flight gets an error output and the loop reports unhealthy.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from engine import EngineConfig, EngineDead, InvalidRequest, QueueFull, SamplingParams
from engine.remote import DELIVERY_FAILED_EXIT_CODE, RemoteEngineLoop, shard_index
from engine.sequence import ERROR_UNAVAILABLE
from engine_testing import PROMPTS, make_engine, run_requests
from test_loop import Collector, wait_for


@pytest.fixture
def remote():
    started = []

    def start(model_dir, **kw):
        kw.setdefault("device", "cpu")
        kw.setdefault("num_kv_blocks", 256)
        kw.setdefault("max_model_len", 512)
        loop = RemoteEngineLoop(EngineConfig(model_dir=str(model_dir), **kw), start_timeout=120).start()
        started.append(loop)
        return loop

    yield start
    for loop in started:
        loop.shutdown(10.0)
        assert loop._proc.poll() is not None, "the engine process outlived shutdown"


def greedy(n):
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


def test_outputs_equal_the_in_process_engine(gqa, remote):
    expected = run_requests(make_engine(gqa), PROMPTS, greedy(20))
    loop = remote(gqa)
    assert loop.info["num_blocks"] == 256 and loop.info["max_model_len"] == 512
    col = Collector()
    for i, p in enumerate(PROMPTS):
        n = loop.submit(f"r{i}", p, greedy(20), col.callback(f"r{i}"))
        assert n == len(make_engine(gqa).tokenize(p))
    col.wait([f"r{i}" for i in range(len(PROMPTS))])
    assert [col.result(f"r{i}") for i in range(len(PROMPTS))] == expected
    # Delivered by the delivery threads, not the thread that answers submits.
    assert col.threads and col.threads <= {f"llm-remote-delivery-{i}" for i in range(loop.config.response_threads)}
    wait_for(lambda: loop.stats().kv_blocks_used == 0 and loop.num_in_flight == 0)


def test_submit_raises_what_engine_loop_raises(gqa, remote):
    loop = remote(gqa, max_num_seqs=1, max_waiting_requests=1)
    with pytest.raises(InvalidRequest) as info:
        loop.submit("empty", [], greedy(4), lambda out: None)
    assert info.value.field == "text_input"
    with pytest.raises(InvalidRequest) as info:
        loop.submit("long", PROMPTS[0], greedy(10_000), lambda out: None)
    assert info.value.field == "max_tokens"
    with pytest.raises(InvalidRequest) as info:   # checked on this side, with the child's vocabulary size
        loop.submit("oov", [3, loop.limits.vocab_size], greedy(4), lambda out: None)
    assert info.value.field == "text_input"
    col = Collector()
    loop.submit("a", PROMPTS[0], greedy(200), col.callback("a"))
    col.wait_first(["a"])                       # a runs; the queue (bound 1) is empty
    loop.submit("b", PROMPTS[1], greedy(5), col.callback("b"))   # waits behind a
    with pytest.raises(QueueFull):
        loop.submit("c", PROMPTS[2], greedy(5), lambda out: None)
    loop.abort("a")
    col.wait(["a", "b"])
    assert col.outs["a"][-1].finish_reason == "abort"
    assert col.result("b")[2] == "length"


def test_killed_engine_process_fails_requests_in_flight(gqa, remote):
    loop = remote(gqa)
    col = Collector()
    loop.submit("a", PROMPTS[0], greedy(400), col.callback("a"))
    col.wait_first(["a"])
    os.kill(loop._proc.pid, signal.SIGKILL)
    col.wait(["a"])
    last = col.outs["a"][-1]
    assert last.finished and last.finish_reason == "error" and last.error_kind == ERROR_UNAVAILABLE
    assert last.error.startswith("the engine has stopped: the engine process exited unexpectedly"), last.error
    wait_for(lambda: not loop.healthy)
    # Refused as a crash, also in the window where the child is seen dead before the receiver
    # thread has recorded its exit (made here by forgetting the record).
    with pytest.raises(EngineDead, match="the engine process exited unexpectedly"):
        loop.submit("b", PROMPTS[1], greedy(4), lambda out: None)
    wait_for(lambda: loop.fatal_error is not None)
    loop.fatal_error = None
    with pytest.raises(EngineDead, match="the engine process exited unexpectedly"):
        loop.submit("c", PROMPTS[1], greedy(4), lambda out: None)


def test_fatal_step_in_the_engine_process(gqa, remote, monkeypatch):
    monkeypatch.setenv("LLM_FAULT_INJECTION", "fail_engine_after_steps=3")
    loop = remote(gqa)
    col = Collector()
    for rid, p in (("a", PROMPTS[0]), ("b", PROMPTS[1])):
        loop.submit(rid, p, greedy(100), col.callback(rid))
    col.wait(["a", "b"])
    for rid in ("a", "b"):
        last = col.outs[rid][-1]
        assert last.finish_reason == "error" and last.error_kind == ERROR_UNAVAILABLE
        assert last.error.startswith("the engine has stopped: engine step failed:") and "injected engine fault" in last.error
    wait_for(lambda: not loop.healthy)


def test_a_fatal_step_is_reported_while_requests_keep_coming(gqa, remote, monkeypatch):
    """The child reports its fatal error whatever the traffic: with a message from this side more
    often than its poll timeout it once never did, and the loop stayed healthy under load."""
    monkeypatch.setenv("LLM_FAULT_INJECTION", "fail_engine_after_steps=3")
    loop = remote(gqa)
    col = Collector()
    loop.submit("a", PROMPTS[0], greedy(100), col.callback("a"))
    col.wait(["a"])
    assert col.outs["a"][-1].finish_reason == "error"
    deadline = time.monotonic() + 10.0
    while loop.healthy and time.monotonic() < deadline:
        loop.abort("a")   # a message to the child every 50 ms
        time.sleep(0.05)
    assert not loop.healthy and "injected engine fault" in (loop.fatal_error or "")


def test_a_round_of_outputs_that_cannot_be_sent_fails_every_request_in_flight(gqa, remote, monkeypatch):
    """A lost round would leave its requests (and their finals) unanswered forever: the engine
    process exits instead, and every request in flight gets an error output."""
    monkeypatch.setenv("LLM_FAULT_INJECTION", "fail_delivery_after_rounds=2")
    loop = remote(gqa)
    col = Collector()
    for rid, p in (("a", PROMPTS[0]), ("b", PROMPTS[1])):
        loop.submit(rid, p, greedy(200), col.callback(rid))
    col.wait(["a", "b"])
    for rid in ("a", "b"):
        last = col.outs[rid][-1]
        assert last.finished and last.finish_reason == "error", last
        assert f"exit code {DELIVERY_FAILED_EXIT_CODE}" in last.error
    wait_for(lambda: not loop.healthy)
    assert loop.num_in_flight == 0


def test_a_raising_callback_loses_only_its_request_and_leaves_nothing_behind(gqa, remote):
    loop = remote(gqa, response_threads=2)
    calls = []

    def bad(out):
        calls.append(out)
        raise ConnectionError("client went away")

    col = Collector()
    loop.submit("bad", PROMPTS[1], greedy(400), bad)
    loop.submit("good", PROMPTS[2], greedy(12), col.callback("good"))
    col.wait(["good"])
    wait_for(lambda: loop.num_in_flight == 0 and loop.stats().kv_blocks_used == 0)   # aborted in the child
    time.sleep(0.3)
    assert len(calls) == 1, "the failed receiver must not be called again"
    assert col.result("good")[2] == "length" and loop.healthy


def test_shutdown_aborts_requests_in_flight(gqa, remote):
    loop = remote(gqa)
    col = Collector()
    loop.submit("a", PROMPTS[0], greedy(400), col.callback("a"))
    col.wait_first(["a"])
    loop.shutdown(10.0)
    col.wait(["a"])
    assert col.outs["a"][-1].finish_reason == "abort"
    assert not loop.healthy


def test_requests_a_shutdown_leaves_unfinished_end_as_aborted(gqa, remote):
    """The child exits during a shutdown without finishing a request (its own abort timed out):
    the request ends as an aborted one (retry elsewhere), not as an error or a refusal."""
    loop = remote(gqa)
    col = Collector()
    loop.submit("a", PROMPTS[0], greedy(400), col.callback("a"))
    col.wait_first(["a"])
    loop._stopping = True   # what shutdown() sets before it asks the child to stop
    os.kill(loop._proc.pid, signal.SIGKILL)
    col.wait(["a"])
    last = col.outs["a"][-1]
    assert last.finished and last.finish_reason == "abort" and last.error is None and last.error_kind is None
    assert loop.fatal_error is None


def test_delivery_rests_after_long_rounds_and_outputs_merge(gqa, remote, monkeypatch):
    """The stub's main thread (Triton's execute) needs the GIL too, so the delivery thread rests
    after long rounds as EngineLoop's does; tokens arriving meanwhile merge into fewer callbacks,
    and the text stays the engine's."""
    import engine.remote as remote_module
    rests = []
    real = remote_module.rest_after_delivery

    def recording(busy_s):
        rests.append(busy_s)
        real(busy_s)
    monkeypatch.setattr(remote_module, "rest_after_delivery", recording)
    expected = run_requests(make_engine(gqa), PROMPTS[:4], greedy(60))
    loop = remote(gqa)
    col, calls = Collector(), {f"r{i}": 0 for i in range(4)}

    def slow(rid):
        inner = col.callback(rid)

        def cb(out):
            calls[rid] += 1
            time.sleep(0.003)   # a slow response send: each round takes >= 3 ms
            inner(out)
        return cb
    for i, p in enumerate(PROMPTS[:4]):
        loop.submit(f"r{i}", p, greedy(60), slow(f"r{i}"))
    col.wait([f"r{i}" for i in range(4)])
    assert [col.result(f"r{i}") for i in range(4)] == expected
    from engine.loop import DELIVERY_REST_AFTER_S
    assert any(b >= DELIVERY_REST_AFTER_S for b in rests)
    assert sum(calls.values()) < 4 * 60, calls   # merged while the delivery thread rested


def test_submit_does_not_wait_for_the_engine_process(gqa, remote):
    """Requests are checked and sent without a round trip: even a stopped child does not hold up
    the caller (Triton's execute), and everything runs once it continues, in order: an abort sent
    right after a submit ends that request."""
    expected = run_requests(make_engine(gqa), PROMPTS[:4], greedy(12))
    loop = remote(gqa)
    col = Collector()
    os.kill(loop._proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        lengths = [loop.submit(f"r{i}", p, greedy(12), col.callback(f"r{i}")) for i, p in enumerate(PROMPTS[:4])]
        assert time.monotonic() - started < 5.0
        assert lengths == [len(make_engine(gqa).tokenize(p)) for p in PROMPTS[:4]]
        with pytest.raises(InvalidRequest) as info:   # checked on this side, with the child's limits
            loop.submit("long", PROMPTS[0], greedy(10_000), lambda out: None)
        assert info.value.field == "max_tokens"
        with pytest.raises(InvalidRequest) as info:
            loop.submit("r0", PROMPTS[0], greedy(4), lambda out: None)
        assert info.value.field == "request_id"
        loop.submit("gone", PROMPTS[0], greedy(200), col.callback("gone"))
        loop.abort("gone")
    finally:
        os.kill(loop._proc.pid, signal.SIGCONT)
    col.wait([f"r{i}" for i in range(4)] + ["gone"])
    assert [col.result(f"r{i}") for i in range(4)] == expected
    assert col.outs["gone"][-1].finish_reason == "abort" and col.outs["gone"][-1].num_output_tokens < 200


def test_a_request_the_engine_process_refuses_gets_an_error_output(gqa, remote):
    """The child checks every request again; one this side let through (its limits are stale here
    on purpose) ends with a final error output that says it was the request's fault."""
    from engine.engine import RequestLimits
    from engine.sequence import ERROR_INVALID_REQUEST
    loop = remote(gqa)
    loop.limits = RequestLimits(10 ** 6, 10 ** 6, loop.limits.vocab_size)
    col = Collector()
    loop.submit("big", PROMPTS[0], greedy(5000), col.callback("big"))
    loop.submit("ok", PROMPTS[1], greedy(5), col.callback("ok"))
    col.wait(["big", "ok"])
    (out,) = col.outs["big"]
    assert out.finished and out.finish_reason == "error" and out.error_kind == ERROR_INVALID_REQUEST
    assert out.error.startswith("max_tokens:")
    assert col.result("ok")[2] == "length"
    wait_for(lambda: loop.num_in_flight == 0)


def test_outputs_cross_the_socket_column_by_column():
    from engine.remote import decode_outputs, encode_outputs
    from engine.sequence import RequestOutput
    outs = [RequestOutput("a", "x", [1], False, None, 3, 1, -0.5),
            RequestOutput("b", "", [], True, "error", 4, 0, 0.0, None, "boom", "unavailable"),
            RequestOutput("c", "yz", [2, 3], True, "length", 5, 2, -1.0, [{"2": {"logprob": -0.1}}])]
    assert decode_outputs(encode_outputs(outs)) == outs
    assert decode_outputs(encode_outputs([])) == []


def _ids_on_shards(num_shards):
    """One request id per delivery thread."""
    ids = {}
    for i in range(1000):
        ids.setdefault(shard_index(f"q{i}", num_shards), f"q{i}")
        if len(ids) == num_shards:
            return [ids[s] for s in range(num_shards)]
    raise AssertionError("no ids found for every shard")


def test_a_blocked_response_send_holds_up_only_its_own_delivery_thread(gqa, remote):
    """Triton's response send waits on the server. With response_threads=2, a request whose send
    is stuck delays only the requests of its own thread: the other thread's request streams to the
    end meanwhile, and once unblocked the stuck one finishes with the engine's tokens, in order."""
    expected = run_requests(make_engine(gqa), PROMPTS[:2], greedy(30))
    loop = remote(gqa, response_threads=2)
    stuck, free = _ids_on_shards(2)
    release = threading.Event()
    col = Collector()
    loop.submit(stuck, PROMPTS[0], greedy(30), col.callback(stuck, hook=lambda out: release.wait(60)))
    col.wait_first([stuck])
    loop.submit(free, PROMPTS[1], greedy(30), col.callback(free))
    col.wait([free])                       # while `stuck` is still blocked in its first send
    assert not col.done[stuck].is_set()
    release.set()
    col.wait([stuck])
    assert [col.result(stuck), col.result(free)] == expected


def test_each_request_is_delivered_by_one_thread(gqa, remote):
    loop = remote(gqa, response_threads=3)
    ids = _ids_on_shards(3)
    names: dict[str, set] = {rid: set() for rid in ids}
    col = Collector()
    for rid, prompt in zip(ids, PROMPTS):
        loop.submit(rid, prompt, greedy(25),
                    col.callback(rid, hook=lambda out: names[out.request_id].add(threading.current_thread().name)))
    col.wait(ids)
    assert all(len(n) == 1 for n in names.values()), names
    assert len(set().union(*names.values())) == 3   # the three requests went to three threads


def test_submit_many_is_one_message_and_refuses_only_the_bad_requests(gqa, remote, monkeypatch):
    """The Triton adapter admits what queued up in one batch: one tokenizer call and one message to
    the engine process; a bad request (too long, a duplicate id) gets its exception back and costs
    the others nothing."""
    loop = remote(gqa)
    messages = []
    send = loop._send
    monkeypatch.setattr(loop, "_send", lambda message: (messages.append(message[0]), send(message)))
    col = Collector()
    ids = make_engine(gqa).tokenize(PROMPTS[3])
    batch = [("a", PROMPTS[0], greedy(10), col.callback("a")),
             ("long", PROMPTS[1], greedy(10_000), lambda out: None),
             ("b", PROMPTS[2], greedy(10), col.callback("b")),
             ("a", PROMPTS[1], greedy(10), lambda out: None),      # duplicate of the first
             ("ids", ids, greedy(10), col.callback("ids"))]
    results = loop.submit_many(batch)
    assert messages == ["submit"]
    engine = make_engine(gqa)
    assert results[0] == len(engine.tokenize(PROMPTS[0])) and results[2] == len(engine.tokenize(PROMPTS[2]))
    assert results[4] == len(ids)
    assert isinstance(results[1], InvalidRequest) and results[1].field == "max_tokens"
    assert isinstance(results[3], InvalidRequest) and "already running" in str(results[3])
    col.wait(["a", "b", "ids"])
    expected = run_requests(make_engine(gqa), [PROMPTS[0], PROMPTS[2], PROMPTS[3]], greedy(10))
    assert [col.result(r) for r in ("a", "b", "ids")] == expected
    wait_for(lambda: loop.num_in_flight == 0)
    loop.shutdown(10.0)
    assert all(isinstance(r, EngineDead) for r in loop.submit_many(batch[:2]))


def test_a_round_sends_final_outputs_first_then_first_tokens():
    from engine.remote import in_delivery_order
    from engine.sequence import RequestOutput

    def out(rid, new_tokens, total, finished=False):
        return RequestOutput(rid, "x" * new_tokens, list(range(new_tokens)), finished,
                             "length" if finished else None, 4, total)

    round_ = [out("streaming-a", 2, 10), out("new-b", 1, 1), out("done-c", 1, 12, finished=True),
              out("streaming-d", 3, 7), out("new-e", 2, 2), out("done-f", 2, 2, finished=True)]
    assert [o.request_id for o in in_delivery_order(round_)] == \
        ["done-c", "done-f", "new-b", "new-e", "streaming-a", "streaming-d"]
