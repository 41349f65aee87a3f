"""Per-request sampling options, parsed and validated from the JSON that clients send.

Clients (genai-perf, perf_analyzer input files, the vLLM backend's users) send `sampling_parameters`
as a JSON object whose numbers may arrive as strings ("128"); we accept those, and refuse everything
else with a message that names the offending key.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields

MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_LOGPROBS = 20
GREEDY_TEMPERATURE = 1e-5   # as vLLM: lower temperatures sample greedily
# vLLM parameters that clients often send with their default value: accepted as that value only
# (n: completions per request).
ACCEPTED_ONLY_AS_DEFAULT = {"n": 1}


class InvalidRequest(ValueError):
    """A request the engine refuses; `field` names the input or parameter at fault."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass
class SamplingParams:
    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1                       # -1 or 0: no top-k
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None           # also return this many top alternatives per token
    skip_special_tokens: bool = True

    @property
    def greedy(self) -> bool:
        # Below this, logits / temperature overflows float32; the distribution is one-hot anyway.
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def has_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)

    @classmethod
    def from_json(cls, text: str | None, max_json_bytes: int = 64 * 1024) -> "SamplingParams":
        if text is None or text == "":
            return cls()
        size = len(text) if len(text) > max_json_bytes else len(text.encode("utf-8", "surrogatepass"))
        if size > max_json_bytes:
            raise InvalidRequest("sampling_parameters", f"JSON is {size} bytes, limit {max_json_bytes}")
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as e:  # ValueError: also JSON integers too long to parse
            raise InvalidRequest("sampling_parameters", f"not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise InvalidRequest("sampling_parameters", "must be a JSON object")
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: dict) -> "SamplingParams":
        known = {f.name for f in fields(cls)} | ACCEPTED_ONLY_AS_DEFAULT.keys()
        unknown = sorted(set(obj) - known)
        if unknown:
            raise InvalidRequest(unknown[0], f"unknown sampling parameter (known: {', '.join(sorted(known))})")
        p = cls()
        for key, raw in obj.items():
            if key in ACCEPTED_ONLY_AS_DEFAULT:
                if _as_int(key, raw) != ACCEPTED_ONLY_AS_DEFAULT[key]:
                    raise InvalidRequest(key, f"only {ACCEPTED_ONLY_AS_DEFAULT[key]} is supported, got {raw!r}")
                continue
            setattr(p, key, _CONVERTERS[key](key, raw))
        p.validate()
        return p

    def validate(self) -> None:
        def bad(name, msg):
            raise InvalidRequest(name, msg)
        if self.max_tokens < 1:
            bad("max_tokens", f"must be at least 1, got {self.max_tokens}")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            bad("min_tokens", f"must be between 0 and max_tokens ({self.max_tokens}), got {self.min_tokens}")
        if not 0.0 <= self.temperature <= 100.0:
            bad("temperature", f"must be in [0, 100], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            bad("top_k", f"must be -1 (off) or positive, got {self.top_k}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            bad("seed", f"must be in [0, 2**63), got {self.seed}")
        # vLLM accepts any positive value, but dividing logits by ~1e-300 overflows them to inf
        # and the request silently samples NaNs (token 0 forever): 0.01 already multiplies by 100.
        if not 0.01 <= self.repetition_penalty <= 10.0:
            bad("repetition_penalty", f"must be in [0.01, 10], got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                bad(name, f"must be in [-2, 2], got {getattr(self, name)}")
        if len(self.stop) > MAX_STOP_STRINGS:
            bad("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        for s in self.stop:
            if not s or len(s) > MAX_STOP_STRING_CHARS:
                bad("stop", f"stop strings must have 1 to {MAX_STOP_STRING_CHARS} characters")
        if any(t < 0 for t in self.stop_token_ids):
            bad("stop_token_ids", "token ids must be non-negative")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            bad("logprobs", f"must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")


def _as_int(name, v):
    if isinstance(v, bool):
        raise InvalidRequest(name, f"must be an integer, got {v!r}")
    if isinstance(v, str):
        text = v.strip()
        try:
            v = int(text)           # exact, also above 2**53 (seeds)
        except ValueError:
            try:
                v = float(text)     # "128.0"
            except (ValueError, OverflowError):
                raise InvalidRequest(name, f"must be an integer, got {text!r}") from None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int):
        raise InvalidRequest(name, f"must be an integer, got {v!r}")
    return v


def _as_float(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise InvalidRequest(name, f"must be a number, got {v!r}")
    try:
        f = float(v)
    except (ValueError, OverflowError):  # OverflowError: an integer too large for a float
        raise InvalidRequest(name, f"must be a number, got {v!r}") from None
    if not math.isfinite(f):
        raise InvalidRequest(name, f"must be finite, got {v!r}")
    return f


def _as_bool(name, v):
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise InvalidRequest(name, f"must be true or false, got {v!r}")


def _as_optional_int(name, v):
    return None if v is None else _as_int(name, v)


def _as_str_list(name, v):
    if v is None:   # as vLLM: null is the default, none
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise InvalidRequest(name, "must be a string or a list of strings")
    return list(v)


def _as_int_list(name, v):
    if v is None:
        return []
    if not isinstance(v, list):
        raise InvalidRequest(name, "must be a list of integers")
    return [_as_int(name, x) for x in v]


_CONVERTERS = {
    "max_tokens": _as_int, "min_tokens": _as_int, "temperature": _as_float, "top_p": _as_float,
    "top_k": _as_int, "seed": _as_optional_int, "stop": _as_str_list, "stop_token_ids": _as_int_list,
    "ignore_eos": _as_bool, "include_stop_str_in_output": _as_bool,
    "repetition_penalty": _as_float, "presence_penalty": _as_float, "frequency_penalty": _as_float,
    "logprobs": _as_optional_int, "skip_special_tokens": _as_bool,
}
