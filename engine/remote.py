"""Run the engine in a child process, behind the same interface as EngineLoop.

Why: in Triton's Python backend the model's stub process runs the engine thread and the thread that
hands responses to Triton, and both need the one GIL of that process. With hundreds of streams the
response sends take half of it and the engine steps at half speed (served throughput was 0.5-0.6 of
the offline engine's on an H100). Here the engine (and its EngineLoop) runs in its own Python
process with its own GIL; each delivery round of outputs crosses a local socket as one pickled
message, and the stub process only sends responses.

    loop = RemoteEngineLoop(config).start()     # spawns `python3 -m engine.remote`, waits for ready

Used by the Triton adapter when the config parameter engine_process is true (the default for GPU
instances: EngineConfig.runs_in_own_process).
    n = loop.submit("r1", "Once upon a time", SamplingParams(), on_output)
    results = loop.submit_many([("r2", "Hi", params, cb2), ("r3", "Bye", params, cb3)])  # lengths or errors
    loop.abort("r1"); loop.drain(20.0); loop.shutdown()

`submit` tokenizes and validates here, with the limits the child reported when it came up, so it
raises the same InvalidRequest, QueueFull and EngineDead as EngineLoop.submit, and then sends the
request without waiting for an answer: a round trip to the busy child cost ~2 ms a request (the
child's GIL is the engine thread's), all of it inside Triton's execute(), which takes one request
at a time. The queue bound is checked against the requests this side has sent that have no output yet;
the child checks its own queue again, and a request it refuses after all gets a final error output
whose `error_kind` says why. If the child dies, every request in flight gets an error output and
`healthy` turns False, as after a fatal step in EngineLoop.

The stub side sends responses from `response_threads` delivery threads (default 4), each owning
the requests whose id hashes to it (so each request's responses stay in order).

Outputs cross the socket column by column (`encode_outputs`): one list per field, which pickles
~5x faster than a list of objects, on both sides.

The child runs this interpreter, or inside the Python backend (whose sys.executable may be the
stub) the `python3` first on PATH, which is the interpreter whose packages the stub uses (see
tools/serve.py); the repository root goes on its PYTHONPATH.
"""
from __future__ import annotations

import itertools
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from dataclasses import astuple
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Callable

from engine.config import EngineConfig
from engine.engine import EngineStats, RequestLimits, check_request, load_tokenizer
from engine.loop import (EngineDead, EngineLoop, deliver_outputs, engine_stopped_output, error_kind_of, merge_outputs,
                         rest_after_delivery)
from engine.sampling_params import InvalidRequest, SamplingParams
from engine.scheduler import QueueFull
from engine.sequence import RequestOutput

log = logging.getLogger(__name__)

OutputCallback = Callable[[RequestOutput], None]
REPO_ROOT = Path(__file__).resolve().parents[1]


def encode_outputs(outs: list[RequestOutput]) -> tuple:
    """A round of outputs as one list per field (see decode_outputs)."""
    return tuple(map(list, zip(*(o.__reduce__()[1] for o in outs)))) if outs else ()


def decode_outputs(columns: tuple) -> list[RequestOutput]:
    return [RequestOutput(*fields) for fields in zip(*columns)]


class RemoteEngineLoop:
    def __init__(self, config: EngineConfig, start_timeout: float = 600.0):
        self.config = config
        self.start_timeout = start_timeout
        self.fatal_error: str | None = None
        self.info: dict = {}                       # from the child: num_blocks, max_model_len, ...
        self._stats: EngineStats | None = None     # the child's, as of its last message
        self._callbacks: dict[str, OutputCallback] = {}
        self._unstarted: set[str] = set()          # sent, no output yet (the queue bound counts them)
        self._draining = False
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._stopping = False
        self._conn = None
        self._proc: subprocess.Popen | None = None
        self._tokenizer = load_tokenizer(config.model_dir)   # the engine's own (LLMEngine.tokenize)
        # The receiver thread reads the child's messages as they come; delivery threads make the
        # (slow) response sends, each for its share of the requests (by request id, so a request's
        # outputs stay in order), merging rounds that queued up meanwhile.
        self._receiver = threading.Thread(target=self._receive_loop, name="llm-remote-receiver", daemon=True)
        self._shards = [_DeliveryShard(i, self._delivery_loop) for i in range(max(1, config.response_threads))]

    # ----- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "RemoteEngineLoop":
        self._socket_dir = tempfile.mkdtemp(prefix="llm-engine-")
        address = os.path.join(self._socket_dir, "socket")
        authkey = secrets.token_bytes(16)
        listener = Listener(address, family="AF_UNIX", authkey=authkey)
        python = _python_executable()
        env = dict(os.environ, LLM_ENGINE_ADDRESS=address, LLM_ENGINE_AUTHKEY=authkey.hex(),
                   PYTHONPATH=os.pathsep.join([str(REPO_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        self._proc = subprocess.Popen([python, "-m", "engine.remote"], env=env, cwd=str(REPO_ROOT))
        # Accept with a deadline: a child that dies before connecting must not hang us.
        accepted: list = []
        t = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
        t.start()
        deadline = time.monotonic() + self.start_timeout
        while t.is_alive() and self._proc.poll() is None and time.monotonic() < deadline:
            t.join(0.1)
        if not accepted:
            self._proc.kill()
            listener.close()
            raise RuntimeError(f"engine process did not start (exit code {self._proc.poll()})")
        listener.close()
        self._conn = accepted[0]
        self._send(("config", self.config))
        while True:   # model loading and graph capture happen now
            if not self._conn.poll(max(0.0, deadline - time.monotonic())):
                self._proc.kill()
                raise RuntimeError("engine process did not become ready in time")
            kind, payload = self._conn.recv()
            if kind == "ready":
                self.info = payload
                self.limits = RequestLimits(payload["max_model_len"], payload["kv_capacity_tokens"],
                                            payload["vocab_size"])
                break
            if kind == "init_failed":
                self._proc.wait(30)
                raise RuntimeError(f"engine process failed to start: {payload}")
        self._receiver.start()
        for shard in self._shards:
            shard.thread.start()
        return self

    @property
    def healthy(self) -> bool:
        return (self.fatal_error is None and not self._stopping and self._proc is not None
                and self._proc.poll() is None)

    def _why_not_healthy(self) -> str:
        """Why new requests are refused. The child can be seen dead (poll) before the receiver
        thread has recorded its exit as fatal_error: that is a crash too, not a shutdown."""
        if self.fatal_error:
            return self.fatal_error
        code = self._proc.poll() if self._proc is not None else None
        if code is not None and not self._stopping:
            return f"the engine process exited unexpectedly (exit code {code})"
        return "the engine is shutting down"

    @property
    def num_in_flight(self) -> int:
        return len(self._callbacks)

    def stats(self) -> EngineStats:
        if self._stats is None:
            total = self.info.get("num_blocks", 0)
            return EngineStats(0, 0, 0, total, 0, 0, 0)
        return self._stats

    # ----- the EngineLoop interface ---------------------------------------------------------------
    def submit(self, request_id: str, prompt: str | list[int], params: SamplingParams,
               on_output: OutputCallback) -> int:
        (result,) = self.submit_many([(request_id, prompt, params, on_output)])
        if isinstance(result, Exception):
            raise result
        return result

    def submit_many(self, requests: list[tuple[str, str | list[int], SamplingParams, OutputCallback]]
                    ) -> list[int | Exception]:
        """Several submits at once: one tokenizer call, which runs without the GIL (and in
        parallel), and one message to the child, so the stub's GIL is handed over a few times per
        batch instead of per request. Each result is the request's prompt length, or the
        exception `submit` would raise for it (then nothing was queued for it)."""
        if not self.healthy:
            return [EngineDead(self._why_not_healthy())] * len(requests)
        if self._draining:
            return [EngineDead("the server is shutting down")] * len(requests)
        # Here, not in the busy child: its GIL belongs to the engine.
        texts = [prompt for _, prompt, _, _ in requests if isinstance(prompt, str)]
        encoded = iter(self._tokenizer.encode_batch(texts, add_special_tokens=True) if texts else ())
        results: list[int | Exception] = []
        accepted = []
        for request_id, prompt, params, on_output in requests:
            ids = next(encoded).ids if isinstance(prompt, str) else list(prompt)
            try:
                check_request(ids, params, self.limits)
                with self._lock:
                    if request_id in self._callbacks:
                        raise InvalidRequest("request_id", f"{request_id!r} is already running")
                    if len(self._unstarted) >= self.config.max_waiting_requests:
                        raise QueueFull(f"the waiting queue is full ({len(self._unstarted)} requests); retry later")
                    self._callbacks[request_id] = on_output   # before the child can answer with outputs
                    self._unstarted.add(request_id)
            except (InvalidRequest, QueueFull) as e:
                results.append(e)
                continue
            accepted.append((request_id, ids, params))
            results.append(len(ids))
        if accepted:
            try:
                self._send(("submit", accepted))
            except OSError as e:
                for request_id, _, _ in accepted:
                    self._forget(request_id)
                dead = EngineDead(f"engine process unreachable: {e}")
                results = [dead if isinstance(r, int) else r for r in results]
        return results

    def abort(self, request_id: str) -> None:
        self._send_quietly(("abort", request_id))

    def drain(self, grace_s: float) -> None:
        self._draining = True
        self._send_quietly(("drain", grace_s))

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._send_quietly(("shutdown", timeout))
        if self._proc is not None:
            try:
                self._proc.wait(timeout + 5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._receiver.join(timeout)
        for shard in self._shards:
            shard.thread.join(timeout)
        shutil.rmtree(getattr(self, "_socket_dir", ""), ignore_errors=True)

    # ----- plumbing ------------------------------------------------------------------------------
    def _send(self, message) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _send_quietly(self, message) -> None:
        try:
            self._send(message)
        except (OSError, ValueError):
            pass   # the child is gone; the receiver reports it

    def _forget(self, request_id: str) -> None:
        with self._lock:
            self._unstarted.discard(request_id)
            self._callbacks.pop(request_id, None)

    def _receive_loop(self) -> None:
        try:
            while True:
                kind, payload = self._conn.recv()
                if kind == "outputs":
                    columns, stats = payload
                    self._stats = EngineStats(*stats)
                    if columns:
                        with self._lock:
                            self._unstarted.difference_update(columns[0])
                        self._post(decode_outputs(columns))
                elif kind == "refused":   # the child did not queue a request after all
                    rid, error_kind, message = payload
                    with self._lock:
                        self._unstarted.discard(rid)
                    self._post([RequestOutput(rid, "", [], True, "error", error=message, error_kind=error_kind)])
                elif kind == "fatal":
                    self.fatal_error = payload
                elif kind == "bye":
                    return
        except (EOFError, OSError):
            pass
        except Exception:
            # Outputs may have been lost: fail everything in flight (below) and stop the child,
            # which would otherwise keep its memory (the GPU's) serving nobody.
            self.fatal_error = f"engine receiver failed: {traceback.format_exc(limit=1).strip()}"
            log.error("engine receiver failed:\n%s", traceback.format_exc())
            if self._proc is not None:
                self._proc.kill()
        finally:
            self._end_of_outputs()

    def _end_of_outputs(self) -> None:
        """The child sends nothing more (bye, crash, kill): fail what is still in flight."""
        if not self._stopping and self.fatal_error is None:
            code = None
            if self._proc is not None:
                try:
                    code = self._proc.wait(2.0)   # its end of the socket closes just before it exits
                except subprocess.TimeoutExpired:
                    pass
            self.fatal_error = f"the engine process exited unexpectedly (exit code {code})"
        for shard in self._shards:
            shard.close()

    def _shard_of(self, request_id: str) -> "_DeliveryShard":
        return self._shards[shard_index(request_id, len(self._shards))]

    def _post(self, outs: list[RequestOutput]) -> None:
        if len(self._shards) == 1:
            self._shards[0].post(outs)
            return
        split: dict[int, list[RequestOutput]] = {}
        n = len(self._shards)
        for out in outs:
            split.setdefault(shard_index(out.request_id, n), []).append(out)
        for index, part in split.items():
            self._shards[index].post(part)

    def _delivery_loop(self, shard: "_DeliveryShard") -> None:
        while True:
            outputs, done = shard.take()
            started = time.perf_counter()
            self._deliver(outputs)
            if done and not outputs:
                break
            # The stub's main thread (Triton's execute: new requests) needs the GIL too: rest as
            # EngineLoop's delivery does, while outputs arriving meanwhile merge.
            rest_after_delivery(time.perf_counter() - started)
        # This shard's requests that the child never finished. After a shutdown (the child's own
        # abort timed out) they end as EngineLoop's aborted ones do (finish_reason "abort": the
        # adapter tells the client to retry elsewhere and counts them as aborted, not refused);
        # after a crash they fail as in EngineLoop's fatal step.
        with self._lock:
            pending = [(rid, cb) for rid, cb in self._callbacks.items() if self._shard_of(rid) is shard]
            for rid, _ in pending:
                del self._callbacks[rid]
        if self.fatal_error:
            last = [engine_stopped_output(rid, self.fatal_error) for rid, _ in pending]
        else:
            last = [RequestOutput(rid, "", [], True, "abort") for rid, _ in pending]
        self._deliver_to([(cb, out) for (_, cb), out in zip(pending, last)])

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        groups: dict[str, list[RequestOutput]] = {}   # a request's outputs, in order
        for out in outputs:
            group = groups.get(out.request_id)
            if group is None:
                groups[out.request_id] = [out]
            else:
                group.append(out)
        merged = [g[0] if len(g) == 1 else merge_outputs(*g) for g in groups.values()]
        items = []
        with self._lock:
            for out in in_delivery_order(merged):
                rid = out.request_id
                cb = self._callbacks.pop(rid, None) if out.finished else self._callbacks.get(rid)
                if cb is not None:
                    items.append((cb, out))
        self._deliver_to(items)

    def _deliver_to(self, items) -> None:
        # No `dead` marks: _abort_failed forgets the receiver, so its later outputs find no callback.
        deliver_outputs(items, None, self._abort_failed, yield_gil=False)

    def _abort_failed(self, request_id: str) -> None:
        """A callback raised (deliver_outputs): forget the request and abort it in the child."""
        with self._lock:
            self._callbacks.pop(request_id, None)
        self.abort(request_id)


def in_delivery_order(outputs: list[RequestOutput]) -> list[RequestOutput]:
    """A round's outputs (one per request) in the order to send them: final ones first (a client
    can send its next request only once it has its last response, and Triton's final sends are
    the slowest), then each request's first tokens (its TTFT), then the rest; arrival order
    within each group. Each send is a round trip to the server, so a round for 128 streams takes
    tens of ms and the order decides who waits (perf/results/2026-11-24-h100/served_host_path/,
    the trace in 23_...)."""
    return sorted(outputs, key=lambda o: 0 if o.finished else 1 if o.num_output_tokens == len(o.token_ids) else 2)


def shard_index(request_id: str, num_shards: int) -> int:
    """Which delivery thread sends a request's responses (stable across processes, unlike hash())."""
    return zlib.crc32(request_id.encode()) % num_shards


class _DeliveryShard:
    """One delivery thread and the outputs waiting for it. Triton's Python backend answers each
    response send from a pool of threads in the server process, and the sending thread waits for
    that answer without the GIL, so sends from several threads overlap (they still take turns at the
    GIL; EngineConfig.response_threads says what was measured)."""

    def __init__(self, index: int, run: Callable[["_DeliveryShard"], None]):
        self.thread = threading.Thread(target=run, args=(self,), name=f"llm-remote-delivery-{index}", daemon=True)
        self._outbox: list[RequestOutput] = []
        self._ready = threading.Condition()
        self._closed = False

    def post(self, outs: list[RequestOutput]) -> None:
        with self._ready:
            self._outbox.extend(outs)
            self._ready.notify()

    def close(self) -> None:
        """No more outputs will come: the thread delivers what it has and ends."""
        with self._ready:
            self._closed = True
            self._ready.notify()

    def take(self) -> tuple[list[RequestOutput], bool]:
        """Waits for outputs (or the end); returns them and whether no more will come."""
        with self._ready:
            while not self._outbox and not self._closed:
                self._ready.wait()
            outputs, self._outbox = self._outbox, []
            return outputs, self._closed


def _python_executable() -> str:
    """This interpreter when it is one; inside Triton's Python backend sys.executable may name the
    backend stub, and the python3 first on PATH is the one whose packages the stub uses."""
    if Path(sys.executable).name.startswith("python"):
        return sys.executable
    return shutil.which("python3") or sys.executable


# ----- the child process -------------------------------------------------------------------------
DELIVERY_FAILED_EXIT_CODE = 70


def _child_main() -> None:
    conn = Client(os.environ["LLM_ENGINE_ADDRESS"], family="AF_UNIX",
                  authkey=bytes.fromhex(os.environ["LLM_ENGINE_AUTHKEY"]))
    send_lock = threading.Lock()

    def send(message) -> None:
        with send_lock:
            conn.send(message)

    # Three threads share this process's GIL: the engine's, its delivery's and this one, which
    # answers submits. At the default 5 ms switch interval each submit waited ~5 ms per GIL
    # hand-over behind the busy engine thread (~30 ms a request, throttling admission).
    sys.setswitchinterval(0.0005)
    _, config = conn.recv()
    from engine.faults import inject_engine_fault, parse_faults
    try:
        from engine.engine import LLMEngine
        engine = LLMEngine(config)
        inject_engine_fault(engine, parse_faults())
    except Exception as e:
        send(("init_failed", f"{type(e).__name__}: {e}"))
        return
    failing_round = int(parse_faults().get("fail_delivery_after_rounds", -1))
    rounds = itertools.count()

    def deliver(outs: list[RequestOutput]) -> None:
        try:
            if next(rounds) == failing_round:
                raise RuntimeError("injected delivery fault (LLM_FAULT_INJECTION)")
            send(("outputs", (encode_outputs(outs), astuple(engine.stats()))))
        except BaseException:
            # A round that did not reach the stub (its finals included) would leave its clients
            # waiting forever, and a failed send may have left half a message on the socket:
            # exit, so the stub fails every request in flight and reports the engine dead.
            log.critical("sending outputs to the stub failed; the engine process exits:\n%s",
                         traceback.format_exc())
            logging.shutdown()
            os._exit(DELIVERY_FAILED_EXIT_CODE)

    loop = EngineLoop(engine, deliver_batch=deliver)
    loop.start()
    send(("ready", {"num_blocks": engine.runner.num_blocks, "max_model_len": engine.max_model_len,
                    "block_size": config.block_size, "kv_capacity_tokens": engine.kv_capacity_tokens,
                    "vocab_size": engine.model_config.vocab_size}))
    fatal_sent = False
    try:
        while True:
            # Checked at every message as well as when none comes: steady traffic (a submit or an
            # abort more often than the poll timeout) kept a fatal error from ever being reported,
            # and the stub side stayed "healthy".
            if loop.fatal_error and not fatal_sent:
                send(("fatal", loop.fatal_error))
                fatal_sent = True
            if not conn.poll(0.2):
                continue
            message = conn.recv()
            kind = message[0]
            if kind == "submit":   # checked by the parent already: normally nothing to answer
                for rid, prompt, params in message[1]:
                    try:
                        loop.submit(rid, prompt, params, _REMOTE)
                    except Exception as e:
                        text = str(e) if isinstance(e, (InvalidRequest, QueueFull, EngineDead)) else f"{type(e).__name__}: {e}"
                        send(("refused", (rid, error_kind_of(e), text)))
            elif kind == "abort":
                loop.abort(message[1])
            elif kind == "drain":
                loop.drain(message[1])
            elif kind == "shutdown":
                loop.shutdown(message[1])
                send(("bye", None))
                return
    except (EOFError, OSError):   # the stub process is gone: stop
        loop.shutdown(5.0)


def _remote_placeholder(out: RequestOutput) -> None:
    """The child's EngineLoop delivers whole rounds (deliver_batch); per-request callbacks unused."""


_REMOTE = _remote_placeholder


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s llm-engine %(levelname)s %(message)s")
    _child_main()
    sys.stdout.flush()
    os._exit(0)   # do not wait for daemon threads (CUDA teardown included)


__all__ = ["RemoteEngineLoop"]
