"""Run an LLMEngine on its own thread, so the server hands requests over and returns at once.

Callers (Triton's execute(), tests, benchmarks) call `submit` from any thread: the request is
tokenized and validated there, so a bad request fails in the caller with a clear error, and then
queued for the engine thread.

Outputs are delivered by a second thread, so the engine thread never waits on a slow receiver:
handing a response to Triton costs tens of microseconds per call, which at thousands of tokens per
second would otherwise stall the GPU. When delivery falls behind, consecutive outputs of the same
request are merged into one (text and tokens concatenated), so a loaded server sends fewer, larger
stream chunks instead of queueing without bound. Each request's last output has `finished=True`.

Both threads share one GIL. A delivery thread that always has work (hundreds of streams) would take
it half the time and halve the engine's step rate, so delivery rests after each round for long
enough to stay under DELIVERY_MAX_BUSY of the time; outputs that arrive meanwhile are merged. A
lightly loaded server is not affected: rounds shorter than DELIVERY_REST_AFTER_S (a few sends) get
no rest, so each token still gets its own response.

A callback that raises aborts only its own request. If a step itself fails (a bug, the GPU), every
in-flight request gets an error output and the loop stops, reporting `healthy == False`, instead of
hanging.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections import deque
from typing import Callable

from engine.engine import LLMEngine
from engine.sampling_params import InvalidRequest, SamplingParams
from engine.scheduler import QueueFull
from engine.sequence import ERROR_INVALID_REQUEST, ERROR_UNAVAILABLE, RequestOutput

log = logging.getLogger(__name__)

OutputCallback = Callable[[RequestOutput], None]


# Share of wall time the delivery thread may spend sending; LLM_DELIVERY_MAX_BUSY=1 turns the rests
# off (for side-by-side benchmarks).
DELIVERY_MAX_BUSY = float(os.environ.get("LLM_DELIVERY_MAX_BUSY", "0.3"))
DELIVERY_MAX_REST_S = 0.02
DELIVERY_REST_AFTER_S = 0.002   # rounds shorter than this (a few sends) are not followed by a rest


class EngineDead(RuntimeError):
    """The engine loop has stopped (fatal error or shutdown); no request can be served."""


def error_kind_of(e: Exception) -> str | None:
    """RequestOutput.error_kind for a request refused with this exception after it was queued."""
    if isinstance(e, InvalidRequest):
        return ERROR_INVALID_REQUEST
    if isinstance(e, (QueueFull, EngineDead)):
        return ERROR_UNAVAILABLE
    return None


def engine_stopped_output(request_id: str, reason: str) -> RequestOutput:
    """The final output of a request in flight when the engine died (a failed step, a dead engine
    process): UNAVAILABLE with the same words as a request refused after that (the model's
    "the engine has stopped: ..."), since another instance or a restarted one can serve it."""
    return RequestOutput(request_id, "", [], True, "error", error=f"the engine has stopped: {reason}",
                         error_kind=ERROR_UNAVAILABLE)


def merge_outputs(*outs: RequestOutput) -> RequestOutput:
    """One output equivalent to delivering `outs` in order (same request)."""
    last = outs[-1]
    logprobs = None
    if any(o.logprobs is not None for o in outs):
        logprobs = [entry for o in outs for entry in (o.logprobs or [])]
    return RequestOutput(
        last.request_id, "".join(o.text for o in outs), [t for o in outs for t in o.token_ids], last.finished,
        last.finish_reason, last.num_input_tokens, last.num_output_tokens, last.cumulative_logprob,
        logprobs, last.error, last.error_kind)


def rest_after_delivery(busy_s: float) -> None:
    """After a delivery round that took `busy_s`, rest (without the GIL) so that sending stays
    under DELIVERY_MAX_BUSY of the time; bounded, so that a slow receiver does not hold back
    everyone's next outputs. Only after a long round: a lightly loaded server keeps one response
    per token. Used by EngineLoop and by RemoteEngineLoop's delivery thread alike."""
    if busy_s >= DELIVERY_REST_AFTER_S:
        time.sleep(min(busy_s * (1 - DELIVERY_MAX_BUSY) / DELIVERY_MAX_BUSY, DELIVERY_MAX_REST_S))


def deliver_outputs(items, dead: set[tuple[str, int]] | None, abort: Callable[[str], None],
                    yield_gil: bool = True) -> None:
    """Hand each (callback, output) pair to its callback. A callback that raises loses its request:
    the request is aborted in the engine (its blocks freed) and its later outputs are dropped
    (`dead` holds it until its final output has gone by; None where the caller forgets the
    receiver itself). A receiver is the request id and the callback together, as in the delivery
    loop's merge: a duplicate id that the engine refuses has its own callback, whose error must
    still arrive while the first receiver's outputs are being dropped.

    yield_gil: after each callback, let a thread waiting for the GIL (the engine thread of this
    process) have it. Off where the engine runs in another process (engine/remote.py): there each
    hand-over only made this thread wait for the GIL again behind the process's other senders."""
    for cb, out in items:
        rid = out.request_id
        receiver = (rid, id(cb))
        if dead is not None and receiver in dead:
            if out.finished:
                dead.discard(receiver)
            continue
        try:
            cb(out)
            if yield_gil:
                # A receiver that does blocking IPC while holding the GIL (Triton's response
                # sender) would otherwise delay the next engine step by up to the switch
                # interval per send.
                time.sleep(0)
        except Exception:
            log.warning("output callback for %s failed:\n%s", rid, traceback.format_exc())
            if not out.finished:
                if dead is not None:
                    dead.add(receiver)
                abort(rid)   # the receiver is gone: free the request's blocks now


class EngineLoop:
    def __init__(self, engine: LLMEngine, deliver_batch: Callable[[list[RequestOutput]], None] | None = None):
        """deliver_batch: if given, each delivery round's outputs go to it in one call, in order
        and unmerged, instead of to the per-request callbacks (engine/remote.py sends them as one
        message)."""
        self.engine = engine
        self.deliver_batch = deliver_batch
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._new: deque[tuple[str, list[int], SamplingParams, OutputCallback]] = deque()
        self._aborts: deque[str] = deque()
        self._callbacks: dict[str, OutputCallback] = {}   # engine thread only
        self._outbox: deque[tuple[OutputCallback, RequestOutput]] = deque()
        self._outbox_ready = threading.Condition()
        self._stopping = False
        self._drain_deadline: float | None = None   # set by drain(): server shutdown under way
        self._inbox_closed = False   # set (under the lock) when the engine thread takes no more
        self._engine_done = False
        self.fatal_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self._delivery = threading.Thread(target=self._deliver_loop, name="llm-delivery", daemon=True)

    def start(self) -> "EngineLoop":
        self._thread.start()
        self._delivery.start()
        return self

    @property
    def healthy(self) -> bool:
        return self.fatal_error is None and self._thread.is_alive() and not self._stopping

    @property
    def num_in_flight(self) -> int:
        return len(self._callbacks) + len(self._new)

    def submit(self, request_id: str, prompt: str | list[int], params: SamplingParams,
               on_output: OutputCallback) -> int:
        """Validate and queue a request; returns its prompt length. Raises InvalidRequest,
        QueueFull or EngineDead without queueing anything."""
        if not self.healthy:
            raise EngineDead(self.fatal_error or "the engine is shutting down")
        if self._drain_deadline is not None:
            raise EngineDead("the server is shutting down")
        ids = self.engine.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        self.engine.check_request(ids, params)
        with self._lock:
            if self._inbox_closed:  # checked under the lock: the engine thread's last drain is done
                raise EngineDead(self.fatal_error or "the engine is shutting down")
            waiting = len(self._new) + len(self.engine.scheduler.waiting)
            if waiting >= self.engine.config.max_waiting_requests:
                raise QueueFull(f"the waiting queue is full ({waiting} requests); retry later")
            self._new.append((request_id, ids, params, on_output))
        self._wakeup.set()
        return len(ids)

    def submit_many(self, requests: list[tuple[str, str | list[int], SamplingParams, OutputCallback]]
                    ) -> list[int | Exception]:
        """`submit` for each (request_id, prompt, params, on_output); each result is the prompt
        length or the exception `submit` raised (RemoteEngineLoop sends such a batch as one message).
        Any exception, not only the expected ones: raised out of here, one request's failure would
        fail the whole batch, including the requests already queued, which would then run for
        nobody."""
        results: list[int | Exception] = []
        for request in requests:
            try:
                results.append(self.submit(*request))
            except Exception as e:
                results.append(e)
        return results

    def abort(self, request_id: str) -> None:
        """Stop a request (client cancelled); it gets a final output with finish_reason 'abort'
        (or 'stop' when the text it held back completes a stop string) at the start of the next
        engine step, and its KV blocks are freed."""
        with self._lock:
            self._aborts.append(request_id)
        self._wakeup.set()

    def drain(self, grace_s: float) -> None:
        """Server shutdown: refuse new requests, let those in flight run for `grace_s` seconds,
        then abort what is left (each gets its final output, finish_reason 'abort')."""
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + grace_s
            self._wakeup.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Abort everything in flight (each request gets its final output) and stop the threads."""
        self._stopping = True
        self._wakeup.set()
        self._thread.join(timeout)
        self._delivery.join(timeout)

    # ----- engine thread -------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                self._take_inbox()
                if self._drain_deadline is not None and time.monotonic() >= self._drain_deadline:
                    self._abort_all(list(self._callbacks))
                if not self.engine.has_unfinished():
                    self._wakeup.wait(0.5)
                    self._wakeup.clear()
                    continue
                self._emit(self.engine.step())
            with self._lock:
                self._inbox_closed = True
            self._take_inbox()
            self._abort_all(list(self._callbacks))
        except Exception as e:  # a failed step leaves the batch in an unknown state: stop
            self.fatal_error = f"engine step failed: {type(e).__name__}: {e}"
            log.error("%s\n%s", self.fatal_error, traceback.format_exc())
            self._fail_all(self.fatal_error)
        finally:
            with self._outbox_ready:
                self._engine_done = True
                self._outbox_ready.notify()

    def _take_inbox(self) -> None:
        with self._lock:
            new, self._new = list(self._new), deque()
            aborts, self._aborts = list(self._aborts), deque()
        failed = []
        for rid, ids, params, cb in new:
            try:
                self.engine.add_request(rid, ids, params)
            except Exception as e:  # e.g. a duplicate id, a full queue: fail this request only
                failed.append((cb, RequestOutput(rid, "", [], True, "error", error=str(e),
                                                 error_kind=error_kind_of(e))))
                continue
            self._callbacks[rid] = cb
        self._post(failed)
        self._abort_all(aborts)

    def _abort_all(self, request_ids) -> None:
        """Abort these requests in the engine (blocks freed) and deliver their final outputs."""
        self._emit([o for o in map(self.engine.abort, request_ids) if o is not None])

    def _emit(self, outputs: list[RequestOutput]) -> None:
        items = []
        for out in outputs:
            cb = self._callbacks.pop(out.request_id) if out.finished else self._callbacks.get(out.request_id)
            if cb is not None:
                items.append((cb, out))
        self._post(items)

    def _post(self, items) -> None:
        if items:
            with self._outbox_ready:
                self._outbox.extend(items)
                self._outbox_ready.notify()

    def _fail_all(self, message: str) -> None:
        with self._lock:
            self._inbox_closed = True
            pending = [(rid, cb) for rid, _, _, cb in self._new]
            self._new.clear()
        pending += list(self._callbacks.items())
        self._callbacks.clear()
        self._post([(cb, engine_stopped_output(rid, message)) for rid, cb in pending])

    # ----- delivery thread -----------------------------------------------------------------------
    def _deliver_loop(self) -> None:
        dead: set[tuple[str, int]] = set()   # receivers that failed: drop their remaining outputs
        while True:
            with self._outbox_ready:
                while not self._outbox and not self._engine_done:
                    self._outbox_ready.wait()
                if not self._outbox and self._engine_done:
                    return
                items, self._outbox = self._outbox, deque()
            if self.deliver_batch is not None:
                # Unmerged: the receiver (engine/remote.py's stub side) merges what queues up there,
                # and this thread shares its GIL with the engine's (merging here was ~10% of it).
                try:
                    self.deliver_batch([out for _, out in items])
                except Exception:
                    log.error("output delivery failed:\n%s", traceback.format_exc())
                continue
            # Keyed by receiver too: a refused duplicate id has its own callback and its own error.
            merged: dict[tuple[str, int], list] = {}   # insertion order = order of first output
            for cb, out in items:
                key = (out.request_id, id(cb))
                if key in merged:
                    merged[key][1] = merge_outputs(merged[key][1], out)
                else:
                    merged[key] = [cb, out]
            started = time.perf_counter()
            deliver_outputs(merged.values(), dead, self.abort)
            rest_after_delivery(time.perf_counter() - started)

__all__ = ["EngineLoop", "EngineDead", "QueueFull", "deliver_outputs", "engine_stopped_output", "error_kind_of",
           "merge_outputs", "rest_after_delivery"]
