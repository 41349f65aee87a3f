"""Triton Python-backend adapter: Triton requests in, engine outputs back as streamed responses.

Thin on purpose. It (1) reads config.pbtxt parameters into an EngineConfig and starts one engine
per model instance on the instance's device, (2) queues the requests Triton hands to execute()
(which returns at once) for an admission thread that validates them and submits them to the
engine's background loop in batches, and (3) turns engine outputs into Triton responses on the
loop's delivery thread. The tensor interface is the one of Triton's vLLM backend, so
existing clients, perf_analyzer input files and `genai-perf --backend vllm` work unchanged.
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

try:  # installed into the environment (pip install -e .), or run from a checkout
    import engine  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from triton_metrics import LLMMetrics  # noqa: E402

from engine import (EngineConfig, EngineDead, EngineLoop, InvalidRequest, LLMEngine, QueueFull,
                    SamplingParams)
from engine.faults import inject_engine_fault, parse_faults
from engine.remote import RemoteEngineLoop
from engine.sequence import ERROR_INVALID_REQUEST, ERROR_UNAVAILABLE, RequestOutput

REPO_ROOT = Path(__file__).resolve().parents[3]
# How often the cancellation watcher asks Triton about every open request (see
# TritonPythonModel._watch_cancellations): a cancelled stream is stopped at most this much later.
# RequestOutput.error_kind of a request the engine refused after it was queued -> the
# llm_requests_rejected_total reason (the same as for one the adapter refuses up front).
REJECT_REASON = {ERROR_INVALID_REQUEST: "invalid_argument", ERROR_UNAVAILABLE: "unavailable"}
CANCEL_POLL_S = float(os.environ.get("LLM_CANCEL_POLL_S", "0.1"))
BOOL_INPUTS = ("stream", "exclude_input_in_output", "return_finish_reason", "return_cumulative_logprob",
               "return_logprobs", "return_num_input_tokens", "return_num_output_tokens")


def _engine_config(model_config: dict, args: dict) -> EngineConfig:
    """config.pbtxt `parameters` (all strings) -> typed EngineConfig; unknown keys are errors."""
    raw = {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}
    model_dir = os.environ.get("MODEL_DIR") or raw.pop("model_dir", "") or "models/default"
    raw.pop("model_dir", None)
    if not Path(model_dir).is_absolute():
        model_dir = str(REPO_ROOT / model_dir)
    if args.get("model_instance_kind") == "GPU":
        device = f"cuda:{args['model_instance_device_id']}"
    else:
        device = "cpu"
    cfg = EngineConfig(model_dir=model_dir, device=device)
    for key, text in raw.items():
        if not hasattr(cfg, key) or key in ("extra", "device"):
            raise pb_utils.TritonModelException(f"config.pbtxt parameter {key!r} is not an engine option")
        if text.strip() == "":
            continue  # empty = keep the default
        current = getattr(cfg, key)
        if current is not None:
            kind = type(current)
        else:   # an optional field: its annotation says which ("int | None", "bool | None")
            kind = bool if str(EngineConfig.__dataclass_fields__[key].type).startswith("bool") else int
        try:
            if kind is bool:
                value = {"true": True, "false": False}[text.strip().lower()]
            else:
                value = kind(text)
        except (KeyError, ValueError):
            raise pb_utils.TritonModelException(
                f"config.pbtxt parameter {key!r}={text!r} is not a valid {kind.__name__}") from None
        setattr(cfg, key, value)
    return cfg


def _error(message: str, code) -> pb_utils.InferenceResponse:
    # TritonError only takes encodable text: a lone surrogate echoed from the client's JSON
    # (an unknown key "\ud800") made its constructor raise out of execute() instead of failing
    # the request with INVALID_ARG (tests/reliability/test_fuzz_server.py).
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def _string_tensor(name: str, values: list[str]) -> pb_utils.Tensor:
    return pb_utils.Tensor(name, np.array([v.encode("utf-8") for v in values], dtype=np.object_))


class _Request:
    """One request's reply state; `on_output` runs on the engine loop's delivery thread."""

    def __init__(self, sender, prompt: str, flags: dict[str, bool], input_tokens: int, metrics: LLMMetrics,
                 inject_fault: bool = False, on_close=None, t_start: float | None = None):
        self.sender = sender
        self.on_close = on_close          # called once the request has its final response
        self.cancelled = False            # set by the cancellation watcher
        self.inject_fault = inject_fault   # LLM_FAULT_INJECTION fail_response_with_prompt (tests only)
        self.num_responses = 0
        self.metrics = metrics
        self.t_start = time.monotonic() if t_start is None else t_start   # when execute() got it
        self.t_first: float | None = None
        self.t_last = self.t_start
        self.closed = False                # no more responses (the final one is sent or under way)
        self._final_lock = threading.Lock()
        self.counted = False   # in the finished-requests metrics
        self.prompt = prompt
        self.flags = flags
        self.num_input_tokens = input_tokens
        self.stream = flags["stream"]
        self.text_parts: list[str] = []   # non-streaming: everything, sent at the end
        self.logprobs: list[dict] = []

    def send_final(self, response) -> None:
        """The request's last response. Triton frees the request's response factory once it has
        the final flag, and a cancellation check on it after that crashed the server (SIGSEGV in
        TRITONBACKEND_ResponseFactoryIsCancelled, seen on the H100 at c128): so it is sent under
        the lock that `cancelled_by_client` holds while it asks."""
        with self._final_lock:
            self.closed = True
            self.sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def cancelled_by_client(self) -> bool:
        """Whether the client cancelled it (a round trip to the server); False once it is closed."""
        with self._final_lock:
            return not self.closed and not self.cancelled and self.sender.is_cancelled()

    def on_output(self, out: RequestOutput) -> None:
        """Runs on the engine loop's delivery thread. Under load, one call may carry several
        tokens (the loop merges outputs that queued up), so the IPC calls below are per call,
        not per token."""
        if self.closed:
            return
        try:
            self._reply(out)
        except Exception as e:  # never leave the client waiting for a final response
            try:
                self.send_final(_error(f"internal error sending the response: {type(e).__name__}: {e}",
                                       pb_utils.TritonError.INTERNAL))
            finally:
                self._finish("error", out)   # was never counted (tests/reliability/test_faults.py)
                raise

    def _reply(self, out: RequestOutput) -> None:
        self._observe(out)
        if out.error is not None:   # failed, or refused after it was queued (error_kind says why)
            code = {ERROR_INVALID_REQUEST: pb_utils.TritonError.INVALID_ARG,
                    ERROR_UNAVAILABLE: pb_utils.TritonError.UNAVAILABLE}.get(out.error_kind, pb_utils.TritonError.INTERNAL)
            self.send_final(_error(out.error, code))
            return
        if self.cancelled:   # the watcher has aborted it in the engine; this may be that final output
            self.send_final(_error("request cancelled by the client", pb_utils.TritonError.CANCELLED))
            self._finish("cancelled", out)   # closed: its later outputs (up to the abort) are dropped
            return
        if out.finish_reason == "abort":  # the engine is shutting down (unload, server exit)
            self.send_final(_error("request aborted: the model is being unloaded (server shutting down)",
                                   pb_utils.TritonError.UNAVAILABLE))
            return
        if self.stream:
            response = self._response(out.text, out, len(out.token_ids), out.logprobs)
            if out.finished:
                self.send_final(response)
            else:
                self.sender.send(response)
            return
        self.text_parts.append(out.text)
        if out.logprobs:
            self.logprobs.extend(out.logprobs)
        if out.finished:
            text = "".join(self.text_parts)
            if not self.flags["exclude_input_in_output"]:
                text = self.prompt + text
            self.send_final(self._response(text, out, out.num_output_tokens, self.logprobs))

    def _observe(self, out: RequestOutput) -> None:
        if out.num_input_tokens:   # the engine's count; submit's may not be stored yet
            self.num_input_tokens = out.num_input_tokens
        now = time.monotonic()
        if out.token_ids:
            if self.t_first is None:
                self.t_first = now
            else:   # one observation per token, as if they had come evenly since the last output
                self.metrics.token_gaps((now - self.t_last) / len(out.token_ids), len(out.token_ids))
            self.t_last = now
        if out.finished:
            reason = "cancelled" if self.cancelled else ("error" if out.error else (out.finish_reason or "error"))
            self._finish(reason, out)

    def _finish(self, reason: str, out: RequestOutput) -> None:
        self.closed = True
        if self.on_close is not None:
            self.on_close()
        if self.counted:
            return
        self.counted = True
        if out.error_kind is not None and not self.cancelled and self.t_first is None:
            # Refused after it was queued (the engine process's own queue check): a rejection, as
            # when the adapter refuses it up front, not a finished request.
            self.metrics.request_rejected(REJECT_REASON[out.error_kind])
            return
        now = time.monotonic()
        self.metrics.request_finished(reason, out.num_input_tokens or self.num_input_tokens,
                                      out.num_output_tokens,
                                      None if self.t_first is None else self.t_first - self.t_start,
                                      now - self.t_start)

    def _response(self, text: str, out: RequestOutput, num_tokens: int, logprobs) -> pb_utils.InferenceResponse:
        self.num_responses += 1
        if self.inject_fault and self.num_responses >= 2:
            raise RuntimeError("injected fault (LLM_FAULT_INJECTION fail_response_with_prompt)")
        f = self.flags
        tensors = [_string_tensor("text_output", [text])]
        if f["return_finish_reason"]:
            tensors.append(_string_tensor("finish_reason", [str(out.finish_reason)]))
        if f["return_cumulative_logprob"]:
            tensors.append(pb_utils.Tensor("cumulative_logprob",
                                           np.array([out.cumulative_logprob], dtype=np.float32)))
        if f["return_logprobs"]:
            tensors.append(_string_tensor("logprobs", [json.dumps(logprobs)]))
        if f["return_num_input_tokens"]:
            tensors.append(pb_utils.Tensor("num_input_tokens", np.array([self.num_input_tokens], dtype=np.uint32)))
        if f["return_num_output_tokens"]:
            tensors.append(pb_utils.Tensor("num_output_tokens", np.array([num_tokens], dtype=np.uint32)))
        return pb_utils.InferenceResponse(output_tensors=tensors)


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException("this model streams: set model_transaction_policy "
                                                "{ decoupled: true } in config.pbtxt")
        # The engine thread and the response-delivery thread share the GIL; the default 5 ms
        # switch interval would let a busy delivery thread delay engine steps by that much.
        sys.setswitchinterval(0.0005)
        self.config = _engine_config(model_config, args)
        try:   # test-only faults (engine/faults.py), off unless LLM_FAULT_INJECTION is set
            self.faults = parse_faults()
        except ValueError as e:
            raise pb_utils.TritonModelException(str(e)) from None
        if self.config.runs_in_own_process:
            # The engine gets its own process (and GIL): see engine/remote.py.
            self.loop = RemoteEngineLoop(self.config).start()
            engine_stats, num_blocks, max_model_len = self.loop, self.loop.info["num_blocks"], \
                self.loop.info["max_model_len"]
        else:
            engine = LLMEngine(self.config)
            inject_engine_fault(engine, self.faults)
            self.loop = EngineLoop(engine).start()
            engine_stats, num_blocks, max_model_len = engine, engine.runner.num_blocks, engine.max_model_len
        self.max_prompt_bytes = 32 * max_model_len + 1024
        drain_file = os.environ.get("LLM_DRAIN_FILE")
        if drain_file:  # set by tools/serve.py, which creates the file on SIGTERM
            grace = float(os.environ.get("LLM_DRAIN_GRACE_S", "20"))
            threading.Thread(target=self._drain_when_told, args=(Path(drain_file), grace),
                             name="llm-drain-watch", daemon=True).start()
        self.metrics = LLMMetrics({"model": args["model_name"], "version": args["model_version"]},
                                  args["model_instance_name"], engine_stats, healthy=lambda: self.loop.healthy)
        threading.Thread(target=self._watch_engine, args=(args["model_name"],), name="llm-engine-watch",
                         daemon=True).start()
        self._open: dict[str, _Request] = {}   # request id -> reply state, until its final response
        self._closing = False
        self._request_numbers = itertools.count(1)
        self._admissions: queue.SimpleQueue = queue.SimpleQueue()   # (arrival time, requests) from execute()
        self._admitter = threading.Thread(target=self._admit_loop, name="llm-admission", daemon=True)
        self._admitter.start()
        threading.Thread(target=self._watch_cancellations, name="llm-cancel-watch", daemon=True).start()
        where = "its own process" if self.config.runs_in_own_process else "the stub process"
        pb_utils.Logger.log_info(
            f"llm: {self.config.model_dir} on {self.config.device} ({where}), {num_blocks} KV "
            f"blocks of {self.config.block_size} tokens, max_model_len {max_model_len}")

    def _drain_when_told(self, drain_file: Path, grace_s: float) -> None:
        """Triton tells a model nothing until its exit timeout has passed (and 2.51 then crashes if
        streams are still open), so the launcher's SIGTERM handler signals us through a file."""
        while not drain_file.exists():
            time.sleep(0.1)
        pb_utils.Logger.log_info(f"llm: server shutting down; finishing in-flight requests for up to {grace_s}s")
        self.loop.drain(grace_s)

    def _watch_cancellations(self) -> None:
        """Every CANCEL_POLL_S, ask Triton whether the client of each open request cancelled it, and
        abort those in the engine (their KV blocks are freed; the next output sends the CANCELLED
        response). Not on the threads that send responses: in the Python backend every
        is_cancelled() is a round trip to the server through one stub thread that carries them all
        one at a time, so asked at every output it cost the response threads as much as the sends
        themselves (perf/results/2026-11-24-h100/served_host_path/)."""
        while not self._closing:
            time.sleep(CANCEL_POLL_S)
            for request_id, state in list(self._open.items()):
                try:
                    if state.cancelled_by_client():
                        state.cancelled = True
                        self.loop.abort(request_id)
                except Exception as e:   # one failed check must not end cancellations for everyone
                    pb_utils.Logger.log_warn(f"llm: cancellation check of {request_id} failed: {e}")

    def _watch_engine(self, model_name: str, poll_s: float = 0.2) -> None:
        """After a fatal engine error every request in flight has its error and later ones are
        refused at once (EngineDead). Triton 2.51 leaves the model "ready" all the same; the only
        way to change that from here is to unload the model, which needs model control mode
        explicit: `tools/serve.py --unload-on-engine-failure` sets that up and tells us so through
        LLM_UNLOAD_ON_ENGINE_FAILURE (in mode none the call would not return)."""
        while self.loop.fatal_error is None:
            time.sleep(poll_s)
        if os.environ.get("LLM_UNLOAD_ON_ENGINE_FAILURE") != "1":
            pb_utils.Logger.log_error(f"llm: the engine failed ({self.loop.fatal_error}); the model stays "
                                      "loaded and answers UNAVAILABLE (llm_engine_healthy = 0)")
            return
        deadline = time.monotonic() + 10.0   # let the error responses of the failed requests go out
        while self.loop.num_in_flight and time.monotonic() < deadline:
            time.sleep(poll_s)
        pb_utils.Logger.log_error(f"llm: the engine failed ({self.loop.fatal_error}); unloading model "
                                  f"{model_name!r} so that it reports not ready")
        try:
            pb_utils.unload_model(model_name)
        except Exception as e:   # e.g. the server is not in explicit mode after all
            pb_utils.Logger.log_error(f"llm: could not unload {model_name!r}: {e}")

    def execute(self, requests):
        """Runs on the stub's main thread, and Triton hands this instance its next requests only
        once it returns; so it only queues them for the admission thread. Handled here one by
        one, a request kept execute() ~3 ms at high load (mostly waiting for the stub's GIL at
        each hand-over: tokenizer, socket), and requests that clients sent together queued in
        Triton for tens of ms (perf/results/2026-11-24-h100/served_host_path/)."""
        self._admissions.put((time.monotonic(), requests))
        return None

    def _admit_loop(self) -> None:
        """The admission thread: validates what execute() queued and submits it to the engine,
        everything that queued up meanwhile in one batch (one tokenizer call, one message to the
        engine process). Ends at the None that finalize() queues, after the requests before it."""
        while True:
            arrived = [self._admissions.get()]
            while True:
                try:
                    arrived.append(self._admissions.get_nowait())
                except queue.Empty:
                    break
            batch = []
            for item in arrived:
                if item is not None:
                    arrived_at, requests = item
                    batch.extend((arrived_at, request) for request in requests)
            try:
                if batch:
                    self._admit(batch)
            except Exception as e:   # a bug here must not stop admission for everyone after
                pb_utils.Logger.log_error(f"llm: admitting {len(batch)} requests failed: {type(e).__name__}: {e}")
            if None in arrived:
                return

    def _admit(self, batch) -> None:
        ready = []   # (request_id, prompt, params, state)
        for arrived_at, request in batch:
            sender = request.get_response_sender()
            try:
                ready.append(self._prepare(request, sender, arrived_at))
            except Exception as e:   # never registered: no cancellation check can race this send
                self._refuse(functools.partial(sender.send, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL), e)
        if not ready:
            return
        for request_id, _, _, state in ready:
            self._open[request_id] = state   # before submit: its outputs may come at once
        if any(self._fault("slow_submit_with_prompt", prompt) for _, prompt, _, _ in ready):
            time.sleep(1.0)   # LLM_FAULT_INJECTION (tests only): a cancellation arrives meanwhile
        try:
            results = self.loop.submit_many([(rid, prompt, params, state.on_output)
                                             for rid, prompt, params, state in ready])
        except Exception as e:   # a bug: fail this batch, keep serving
            results = [e] * len(ready)
        for (request_id, _, _, state), result in zip(ready, results):
            if isinstance(result, Exception):
                self._open.pop(request_id, None)
                self._refuse(state.send_final, result)
            else:
                state.num_input_tokens = result
                if state.cancelled:
                    # The watcher saw the cancellation while the batch was being submitted, and
                    # its abort may have reached the engine before the request did (a no-op
                    # there): the request would run to max_tokens with nobody listening.
                    self.loop.abort(request_id)

    def _refuse(self, send_final, e: Exception) -> None:
        """Send the final (error) response of a request that was never queued in the engine."""
        if isinstance(e, InvalidRequest):
            response, reason = _error(str(e), pb_utils.TritonError.INVALID_ARG), "invalid_argument"
        elif isinstance(e, QueueFull):
            response, reason = _error(str(e), pb_utils.TritonError.UNAVAILABLE), "unavailable"
        elif isinstance(e, EngineDead):
            response, reason = _error(f"the engine has stopped: {e}", pb_utils.TritonError.UNAVAILABLE), "unavailable"
        else:   # a bug handling one request must not take the others down
            response, reason = _error(f"internal error: {type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL), "internal"
        self.metrics.request_rejected(reason)
        try:
            send_final(response)
        except Exception as send_error:   # the client is gone; nothing else to tell
            pb_utils.Logger.log_warn(f"llm: could not send an error response: {send_error}")

    def _prepare(self, request, sender, arrived_at: float):
        """A request's inputs, validated; raises InvalidRequest naming the field."""
        prompt = self._prompt(request)
        flags = {name: self._bool(request, name) for name in BOOL_INPUTS}
        sp_tensor = pb_utils.get_input_tensor_by_name(request, "sampling_parameters")
        sp_json = self._single_string(sp_tensor, "sampling_parameters") if sp_tensor is not None else None
        params = SamplingParams.from_json(sp_json)
        if flags["return_logprobs"] and params.logprobs is None:
            params.logprobs = 0  # the chosen token's logprob only
        if self._fault("fail_request_with_prompt", prompt):
            raise RuntimeError("injected fault (LLM_FAULT_INJECTION fail_request_with_prompt)")
        # Unique within this instance's engine; a counter, not uuid4 (os.urandom gives the GIL up).
        request_id = f"{request.request_id() or 'req'}-{next(self._request_numbers)}"
        state = _Request(sender, prompt, flags, 0, self.metrics, self._fault("fail_response_with_prompt", prompt),
                         on_close=lambda: self._open.pop(request_id, None), t_start=arrived_at)
        return request_id, prompt, params, state

    def _fault(self, name: str, prompt: str) -> bool:
        marker = self.faults.get(name)
        return bool(marker) and marker in prompt

    def _prompt(self, request) -> str:
        tensor = pb_utils.get_input_tensor_by_name(request, "text_input")
        if tensor is None:
            raise InvalidRequest("text_input", "is required")
        raw = tensor.as_numpy().reshape(-1)
        if raw.size != 1:
            raise InvalidRequest("text_input", f"expected exactly one prompt, got {raw.size}")
        value = raw[0]
        if isinstance(value, bytes) and len(value) > self.max_prompt_bytes:
            raise InvalidRequest("text_input", f"prompt is {len(value)} bytes, limit {self.max_prompt_bytes}")
        prompt = self._decode(value, "text_input")
        if not prompt:
            raise InvalidRequest("text_input", "prompt is empty")
        return prompt

    def _single_string(self, tensor, name: str) -> str:
        raw = tensor.as_numpy().reshape(-1)
        if raw.size != 1:
            raise InvalidRequest(name, f"expected exactly one value, got {raw.size}")
        return self._decode(raw[0], name)

    @staticmethod
    def _decode(value, name: str) -> str:
        if isinstance(value, str):
            return value
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidRequest(name, f"is not valid UTF-8 ({e.reason} at byte {e.start})") from None

    @staticmethod
    def _bool(request, name: str) -> bool:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return False
        raw = tensor.as_numpy().reshape(-1)
        if raw.size != 1:
            raise InvalidRequest(name, f"expected exactly one value, got {raw.size}")
        return bool(raw[0])

    def finalize(self):
        self._closing = True
        self._admissions.put(None)   # what is queued still goes to the engine (and is aborted below)
        self._admitter.join(30.0)
        self.loop.shutdown(timeout=30.0)
        self.metrics.close()
