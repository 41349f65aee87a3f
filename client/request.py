"""Transport-independent pieces: the request options, the result types and the
error type, plus the mapping from a request to the model's input tensors."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

# Optional BOOL inputs of the model that ask for extra outputs.
RETURN_FLAGS = (
    "return_finish_reason",
    "return_cumulative_logprob",
    "return_logprobs",
    "return_num_input_tokens",
    "return_num_output_tokens",
)


@dataclass
class GenerateRequest:
    """One generation request. `None` options are left to the server's default."""

    prompt: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    stream: bool = True
    exclude_input_in_output: bool = False
    # On by default: chunks and the CLI summary need these, and they are cheap.
    return_finish_reason: bool = True
    return_num_input_tokens: bool = True
    return_num_output_tokens: bool = True
    return_cumulative_logprob: bool = False
    return_logprobs: bool = False
    # Any other sampling parameter (repetition_penalty, min_tokens, logprobs, ...);
    # wins over the named fields above.
    sampling: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""

    def sampling_parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        if self.stop:
            params["stop"] = list(self.stop)
        if self.ignore_eos:
            params["ignore_eos"] = True
        params.update(self.sampling)
        return params

    def input_values(self) -> list[tuple[str, str, Any]]:
        """(tensor name, Triton datatype, scalar value) for every input to send.

        `stream` is always sent because the model's default is not ours (we
        default to streaming); other flags only when set, so requests stay
        small and work against models that lack some optional inputs."""
        # What cannot be encoded fails here, the same ClientError on every transport (inside
        # grpc.aio's request iterator an exception would surface as a cancelled call).
        try:
            self.prompt.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ClientError("INVALID_ARGUMENT", f"text_input: cannot be encoded as UTF-8 ({e.reason})") from None
        values: list[tuple[str, str, Any]] = [
            ("text_input", "BYTES", self.prompt),
            ("stream", "BOOL", bool(self.stream)),
        ]
        params = self.sampling_parameters()
        if params:
            try:
                encoded = json.dumps(params)
            except (TypeError, ValueError) as e:   # e.g. a numpy integer
                raise ClientError("INVALID_ARGUMENT", f"sampling_parameters: {e}") from None
            values.append(("sampling_parameters", "BYTES", encoded))
        if self.exclude_input_in_output:
            values.append(("exclude_input_in_output", "BOOL", True))
        for flag in RETURN_FLAGS:
            if getattr(self, flag):
                values.append((flag, "BOOL", True))
        return values

    def http_body(self) -> dict[str, Any]:
        """JSON body for the generate / generate_stream endpoints.

        Triton maps top-level fields to input tensors by name, so this mirrors
        input_values(): sampling_parameters stays a JSON *string*, booleans
        stay JSON booleans."""
        return {name: value for name, _, value in self.input_values()}


class ClientError(Exception):
    """A failed request. `code` is a gRPC-style status name for both transports.

    Triton 2.51 does not carry the model's error code to the client (over gRPC an error inside
    the stream is bare text; over HTTP every model error is a 400), so the server's own messages
    are recognised as well (`code_from_message`): a retry can rely on

      UNAVAILABLE        the waiting queue is full, the engine has stopped/died or is shutting
                         down, the model is being unloaded; also a broken connection or a stream
                         that ended before its final response: retry later or elsewhere
      CANCELLED          the request was cancelled (by this client)
      DEADLINE_EXCEEDED  the client's --timeout ran out
      INTERNAL           "internal error: ..." from the model
      INVALID_ARGUMENT   a bad request: HTTP 400 with any other message; over gRPC (bare text
                         in the stream) a message that begins with the field at fault
                         ("max_tokens: ...") or Triton's refusal of an input tensor
      NOT_FOUND          unknown model (both transports)
      UNKNOWN            any other error inside a gRPC stream

    `http_status` is set for HTTP responses."""

    def __init__(self, code: str, message: str, http_status: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status


# Messages the server sends (model_repository/llm/1/model.py, engine/loop.py, engine/remote.py,
# engine/scheduler.py) -> the code the model meant (or, for a dead engine, UNAVAILABLE: retry
# elsewhere). Matched case-insensitively at the start of the message (each is how the server's
# message begins): a bad request's message quotes the client's own value back
# ("max_tokens: must be an integer, got 'the engine has stopped'"), and matched anywhere that
# made an invalid request look retryable.
_MESSAGE_CODES = (
    ("request cancelled by the client", "CANCELLED"),
    ("the waiting queue is full", "UNAVAILABLE"),
    ("the engine has stopped", "UNAVAILABLE"),
    ("request aborted", "UNAVAILABLE"),
    ("the engine is shutting down", "UNAVAILABLE"),
    ("the server is shutting down", "UNAVAILABLE"),
    ("engine step failed", "UNAVAILABLE"),
    ("engine process unreachable", "UNAVAILABLE"),
    ("the engine process exited unexpectedly", "UNAVAILABLE"),
    ("engine receiver failed", "UNAVAILABLE"),
)


def code_from_message(message: str) -> str | None:
    """The status code a known server error message stands for, or None."""
    text = (message or "").lower().lstrip()
    for needle, code in _MESSAGE_CODES:
        if text.startswith(needle):
            return code
    if text.startswith("internal error"):
        return "INTERNAL"
    return None


# An error inside a gRPC stream is bare text. Besides the model's own phrases (code_from_message),
# a bad request's message begins with the field at fault ("max_tokens: must be at least 1": the
# engine's InvalidRequest), and Triton refuses an unknown model or tensor before the model sees
# the request: INVALID_ARGUMENT / NOT_FOUND, as the same errors read over HTTP.
_FIELD_AT_FAULT = re.compile(r"[a-z][a-z0-9_]*: ")
_TRITON_PHRASES = (("request for unknown model", "NOT_FOUND"),
                   ("unexpected inference input", "INVALID_ARGUMENT"),
                   ("unexpected shape for input", "INVALID_ARGUMENT"),
                   ("inference input '", "INVALID_ARGUMENT"))


def code_from_bare_text(message: str) -> str:
    """The code of an error that reached the client as text alone (inside a gRPC stream)."""
    code = code_from_message(message)
    if code is not None:
        return code
    if _FIELD_AT_FAULT.match(message):
        return "INVALID_ARGUMENT"
    text = message.lower()
    for phrase, code in _TRITON_PHRASES:
        if phrase in text:
            return code
    return "UNKNOWN"


@dataclass
class Chunk:
    """One response from the server. In streaming mode `text` and
    `num_output_tokens` are deltas; `cumulative_logprob` is the running total."""

    text: str
    time: float  # time.perf_counter() when the response arrived
    num_output_tokens: int | None = None
    finish_reason: str | None = None
    cumulative_logprob: float | None = None
    num_input_tokens: int | None = None
    logprobs: Any = None
    final: bool = False


@dataclass
class Result:
    """A whole generation, assembled from its chunks."""

    text: str
    num_output_tokens: int | None
    finish_reason: str | None
    cumulative_logprob: float | None
    num_input_tokens: int | None
    logprobs: list | None
    num_chunks: int
    t_start: float
    t_first: float | None
    t_end: float

    @classmethod
    def from_chunks(cls, chunks: Iterable[Chunk], t_start: float) -> "Result":
        chunks = list(chunks)
        counts = [c.num_output_tokens for c in chunks if c.num_output_tokens is not None]
        logprobs = [c.logprobs for c in chunks if c.logprobs is not None]

        def last(attr):
            values = [getattr(c, attr) for c in chunks if getattr(c, attr) is not None]
            return values[-1] if values else None

        return cls(
            text="".join(c.text for c in chunks),
            num_output_tokens=sum(counts) if counts else None,
            finish_reason=last("finish_reason"),
            cumulative_logprob=last("cumulative_logprob"),
            num_input_tokens=last("num_input_tokens"),
            # The server sends a per-response list; flatten to one per token.
            logprobs=[x for lp in logprobs for x in (lp if isinstance(lp, list) else [lp])] if logprobs else None,
            num_chunks=len(chunks),
            t_start=t_start,
            t_first=chunks[0].time if chunks else None,
            t_end=chunks[-1].time if chunks else time.perf_counter(),
        )

    @property
    def ttft_s(self) -> float | None:
        return None if self.t_first is None else self.t_first - self.t_start

    @property
    def total_s(self) -> float:
        return self.t_end - self.t_start

    @property
    def tokens_per_s(self) -> float | None:
        if not self.num_output_tokens or self.total_s <= 0:
            return None
        return self.num_output_tokens / self.total_s


def _scalar(value: Any) -> Any:
    """Outputs have shape [1] (one sequence); accept a bare value or a list."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def chunk_from_outputs(outputs: dict[str, Any], arrival: float, final: bool = False) -> Chunk | None:
    """Build a Chunk from decoded output values keyed by tensor name (shared
    by the gRPC and HTTP paths). Returns None when no output is present,
    e.g. an empty final response."""
    known = ("text_output", "finish_reason", "cumulative_logprob", "logprobs",
             "num_input_tokens", "num_output_tokens")
    vals = {k: _scalar(outputs[k]) for k in known if k in outputs and outputs[k] is not None}
    if not vals:
        return None
    if isinstance(vals.get("text_output"), bytes):
        vals["text_output"] = vals["text_output"].decode("utf-8", errors="replace")
    reason = vals.get("finish_reason")
    if isinstance(reason, bytes):
        reason = reason.decode()
    # vLLM-style servers send str(None) on responses that are not the last.
    if reason in ("None", "null", ""):
        reason = None
    logprobs = vals.get("logprobs")
    if isinstance(logprobs, bytes):
        logprobs = logprobs.decode()
    if isinstance(logprobs, str):
        logprobs = json.loads(logprobs)
    cum = vals.get("cumulative_logprob")
    n_in = vals.get("num_input_tokens")
    n_out = vals.get("num_output_tokens")
    return Chunk(
        text=vals.get("text_output") or "",
        time=arrival,
        num_output_tokens=None if n_out is None else int(n_out),
        finish_reason=reason,
        cumulative_logprob=None if cum is None else float(cum),
        num_input_tokens=None if n_in is None else int(n_in),
        logprobs=logprobs,
        final=final,
    )
