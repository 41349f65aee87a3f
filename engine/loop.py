"""Run an LLMEngine on its own thread, so the server hands requests over and returns at once.

Callers (Triton's execute(), tests, benchmarks) call `submit` from any thread: the request is
tokenized and validated there, so a bad request fails in the caller with a clear error, and then
queued for the engine thread. Outputs are delivered by calling the request's `on_output` on the
engine thread; the last one has `finished=True`. A callback that raises aborts only its own request.
If a step itself fails (a bug, the GPU), every in-flight request gets an error output and the loop
stops, reporting `healthy == False`, instead of hanging.
"""
from __future__ import annotations

import logging
import threading
import traceback
from collections import deque
from typing import Callable

from engine.engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.scheduler import QueueFull
from engine.sequence import RequestOutput

log = logging.getLogger(__name__)

OutputCallback = Callable[[RequestOutput], None]


class EngineDead(RuntimeError):
    """The engine loop has stopped (fatal error or shutdown); no request can be served."""


class EngineLoop:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._new: deque[tuple[str, list[int], SamplingParams, OutputCallback]] = deque()
        self._aborts: deque[str] = deque()
        self._callbacks: dict[str, OutputCallback] = {}
        self._stopping = False
        self.fatal_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)

    def start(self) -> "EngineLoop":
        self._thread.start()
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
        ids = self.engine.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        self.engine.check_request(ids, params)
        with self._lock:
            waiting = len(self._new) + len(self.engine.scheduler.waiting)
            if waiting >= self.engine.config.max_waiting_requests:
                raise QueueFull(f"the waiting queue is full ({waiting} requests); retry later")
            self._new.append((request_id, ids, params, on_output))
        self._wakeup.set()
        return len(ids)

    def abort(self, request_id: str) -> None:
        """Stop a request (client cancelled); it gets a final output with finish_reason 'abort'."""
        with self._lock:
            self._aborts.append(request_id)
        self._wakeup.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Abort everything in flight (each request gets its final output) and stop the thread."""
        self._stopping = True
        self._wakeup.set()
        self._thread.join(timeout)

    # ----- engine thread -------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                self._take_inbox()
                if not self.engine.has_unfinished():
                    self._wakeup.wait(0.5)
                    self._wakeup.clear()
                    continue
                for out in self.engine.step():
                    self._deliver(out)
        except Exception as e:  # a failed step leaves the batch in an unknown state: stop
            self.fatal_error = f"engine step failed: {type(e).__name__}: {e}"
            log.error("%s\n%s", self.fatal_error, traceback.format_exc())
            self._fail_all(self.fatal_error)
            return
        self._take_inbox()
        for rid in list(self._callbacks):
            out = self.engine.abort(rid)
            if out is not None:
                self._deliver(out)

    def _take_inbox(self) -> None:
        with self._lock:
            new, self._new = list(self._new), deque()
            aborts, self._aborts = list(self._aborts), deque()
        for rid, ids, params, cb in new:
            try:
                self.engine.add_request(rid, ids, params)
            except Exception as e:  # e.g. a duplicate id: fail this request only
                self._safe_call(cb, RequestOutput(rid, "", [], True, "error", error=str(e)))
                continue
            self._callbacks[rid] = cb
        for rid in aborts:
            out = self.engine.abort(rid)
            if out is not None:
                self._deliver(out)

    def _deliver(self, out: RequestOutput) -> None:
        cb = self._callbacks.get(out.request_id)
        if cb is None:
            return
        if out.finished:
            del self._callbacks[out.request_id]
        if not self._safe_call(cb, out) and not out.finished:
            # The receiver is gone (client disconnected, sender closed): free its resources now.
            del self._callbacks[out.request_id]
            self.engine.abort(out.request_id)

    @staticmethod
    def _safe_call(cb: OutputCallback, out: RequestOutput) -> bool:
        try:
            cb(out)
            return True
        except Exception:
            log.warning("output callback for %s failed:\n%s", out.request_id, traceback.format_exc())
            return False

    def _fail_all(self, message: str) -> None:
        with self._lock:
            pending = [(rid, cb) for rid, _, _, cb in self._new]
            self._new.clear()
        pending += list(self._callbacks.items())
        self._callbacks.clear()
        for rid, cb in pending:
            self._safe_call(cb, RequestOutput(rid, "", [], True, "error", error=message))


__all__ = ["EngineLoop", "EngineDead", "QueueFull"]
