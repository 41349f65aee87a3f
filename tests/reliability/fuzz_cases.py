"""Random requests for the fuzz test, from one seeded generator, each with the outcome it must have.

A case is what goes on the wire (gRPC tensors or an HTTP generate body) plus the expectation,
decided by an oracle that follows the adapter's documented checks in order (model.py _submit:
text_input, then the BOOL flags, then sampling_parameters, then the prompt's token count against
max_model_len and the KV cache), using the engine's own parser and tokenizer:

  ok        a complete response: one with the final flag (streaming: data responses, the last final)
  invalid   exactly one error from our model (INVALID_ARG) whose message names `field`
  rejected  exactly one error from Triton's front end (wrong datatype/shape, unknown input, HTTP
            body that does not map onto the inputs); gRPC messages name the input

Generation is deterministic for a given seed. Categories (`label`) are counted in the report.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field as dc_field

import numpy as np

from engine import InvalidRequest, SamplingParams

BOOL_INPUTS = ("stream", "exclude_input_in_output", "return_finish_reason", "return_cumulative_logprob",
               "return_logprobs", "return_num_input_tokens", "return_num_output_tokens")

ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}<>/\\|@#$%^&*-_=+~`",
    "你好世界中文字符测试模型服务器流式输出",
    "😀😃🚀🎉👍🏽🇫🇷❤️✨🤖👨‍👩‍👧‍👦🏳️‍🌈",
    "éèàçüößñÅØÆœ",
    "Привет мир, как дела",
    "안녕하세요 세계",
    "こんにちは世界カタカナ",
    "مرحبا بالعالم",   # right-to-left
    "\t\n\r \u00a0",
    "\u200b\u200d\u0301\u0308\ufeff\u2028",   # zero-width, combining, BOM, line separator
    "".join(map(chr, range(1, 32))),          # control characters
    "<|begin_of_text|><|end_of_text|><|pad|>",  # the tokenizer's special tokens as text
]


@dataclass
class Case:
    idx: int
    label: str                      # category, for the counts
    transport: str                  # grpc | http | http_stream
    expect: str                     # ok | invalid | rejected
    field: str | None = None        # what the error must name (invalid; rejected over gRPC)
    tensors: list = dc_field(default_factory=list)   # grpc: (name, datatype, np.ndarray)
    body: bytes = b""               # http
    stream: bool = False
    flags: dict = dc_field(default_factory=dict)
    max_tokens: int | None = None   # of a valid request, for the response checks


def random_text(rng: random.Random, n: int) -> str:
    out = []
    while len(out) < n:
        alphabet = rng.choice(ALPHABETS)
        out.extend(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
    return "".join(out[:n])


# ----- sampling parameters ---------------------------------------------------------------------

def valid_params(rng: random.Random, vocab: int) -> dict:
    """A random valid parameter object (small max_tokens: the server is a CPU)."""
    p: dict = {}
    mt = rng.randint(1, 8)
    choices = {
        "max_tokens": lambda: rng.choice([mt, str(mt), float(mt), f"{mt}e0", f" {mt} "]),
        "temperature": lambda: rng.choice([0, 0.0, "0", rng.uniform(0, 2), 1, 100, 1e-30, "0.7"]),
        "top_p": lambda: rng.choice([1, 1.0, 0.5, 1e-9, "0.9", rng.uniform(0.01, 1)]),
        "top_k": lambda: rng.choice([-1, 0, 1, 5, vocab - 1, vocab, 10**6, 2**62, 2**63, 10**30, 1e30, "40"]),
        "seed": lambda: rng.choice([None, 0, 1, 2**63 - 1, rng.randrange(2**32), "7"]),
        "stop": lambda: rng.choice([[], "x", ["a", "é", "😀"], [random_text(rng, rng.randint(1, 8)) for _ in range(rng.randint(1, 16))],
                                    ["\ud800"], ["s" * 256]]),
        "stop_token_ids": lambda: [rng.randrange(vocab) for _ in range(rng.randint(0, 5))],
        "ignore_eos": lambda: rng.choice([True, False, "true", "False", 0, 1]),
        "include_stop_str_in_output": lambda: rng.choice([True, False, "true"]),
        "skip_special_tokens": lambda: rng.choice([True, False]),
        "repetition_penalty": lambda: rng.choice([1.0, 0.5, 2, 10, 1e-6, "1.2"]),
        "presence_penalty": lambda: rng.choice([0, -2, 2, 0.5, "-1"]),
        "frequency_penalty": lambda: rng.choice([0, -2, 2, 1.5]),
        "logprobs": lambda: rng.choice([None, 0, 1, 5, 20, "3"]),
    }
    keys = rng.sample(sorted(choices), rng.randint(0, len(choices)))
    if "max_tokens" not in keys and rng.random() < 0.9:
        keys.append("max_tokens")   # the default (16) is fine too, just slower
    for k in keys:
        p[k] = choices[k]()
    if rng.random() < 0.3:
        p["min_tokens"] = rng.randint(0, mt if "max_tokens" in p else 16)
    return p


BAD_VALUES = {  # key -> values that must be refused, naming the key
    "max_tokens": [0, -5, "many", [3], {"n": 3}, True, None, 1.5, "0x10", "1e999", "nan", "inf", ""],
    "min_tokens": [-1, 10**6, "few", [0]],
    "temperature": [-1, 100.5, "hot", [1], None, True, {"t": 1}, 1e309],
    "top_p": [0, -0.1, 1.5, "all", None],
    "top_k": [-2, -(10**30), "most", 2.5, None],
    "seed": [-1, 2**63, 10**30, 1.5, "lucky", [1]],
    "stop": [5, [1, 2], [""], ["x" * 257], ["s"] * 17, {"a": "b"}, None, [["nested"]]],
    "stop_token_ids": [5, [-1], ["a"], [10**30], None, [[1]]],
    "ignore_eos": ["yes", 2, None, [True]],
    "include_stop_str_in_output": ["maybe", 3],
    "skip_special_tokens": ["no", -1],
    "repetition_penalty": [0, -1, 10.5, "strong", None],
    "presence_penalty": [-2.5, 3, "lots"],
    "frequency_penalty": [2.01, -3, [0]],
    "logprobs": [-1, 21, "all", 2.5],
}


def deep(n: int) -> str:
    return "[" * n + "]" * n


def bad_params(rng: random.Random, vocab: int) -> tuple[bytes, str, str]:
    """(sampling_parameters bytes, label) of a request that must be refused; the field comes
    from the oracle."""
    base = valid_params(rng, vocab)
    kind = rng.choice(["bad_value", "bad_value", "bad_value", "unknown_key", "non_object", "malformed",
                       "oversized", "not_utf8", "nested", "huge_number", "duplicate_key", "bom"])
    if kind == "bad_value":
        key = rng.choice(sorted(BAD_VALUES))
        base[key] = rng.choice(BAD_VALUES[key])
        if key == "min_tokens" and base[key] == 10**6:
            base["max_tokens"] = 4
        return json.dumps(base).encode(), f"params:{kind}"
    if kind == "unknown_key":
        base[rng.choice(["max_tokenz", "Temperature", "", " ", "温度", "😀", "\ud800", "max_tokens ",
                         "n", "best_of", "beam_width", "x" * 300])] = 1
        return json.dumps(base).encode(), f"params:{kind}"
    if kind == "non_object":
        return rng.choice([b"[]", b"5", b'"max_tokens"', b"null", b"true", b"[{\"max_tokens\": 2}]"]), f"params:{kind}"
    if kind == "malformed":
        text = json.dumps(base)
        return rng.choice([text[:-1], text + "}", text.replace('"', "'"), "{max_tokens: 3}", "{,}",
                           '{"max_tokens": 3,}', "{" * 3, text + " trailing", '{"max_tokens": 03}']).encode(), \
            f"params:{kind}"
    if kind == "oversized":
        return json.dumps({**base, "stop": ["y" * (65 * 1024)]}).encode(), f"params:{kind}"
    if kind == "not_utf8":
        return b'{"stop": ["\xff\xfe"], "max_tokens": 2}', f"params:{kind}"
    if kind == "nested":
        return rng.choice([('{"max_tokens": 2, "stop": ' + deep(100_000) + "}").encode(),
                           ('{"a": ' * 5000 + "1" + "}" * 5000).encode(),
                           json.dumps({**base, "temperature": {"value": {"value": 1}}}).encode()]), f"params:{kind}"
    if kind == "huge_number":
        return rng.choice([b'{"max_tokens": ' + b"9" * 5000 + b"}",      # beyond int() of a str
                           b'{"max_tokens": 1e400}', b'{"temperature": -1e400}',
                           b'{"seed": ' + b"9" * 100 + b"}",
                           b'{"max_tokens": 1' + b"0" * 30 + b"}"]), f"params:{kind}"
    if kind == "duplicate_key":
        return b'{"max_tokens": 2, "max_tokens": -2}', f"params:{kind}"
    return ("\ufeff" + json.dumps(base)).encode(), f"params:{kind}"


# ----- the oracle ------------------------------------------------------------------------------

class Oracle:
    """What the adapter must answer for a request that got past Triton's own checks."""

    def __init__(self, engine):
        self.engine = engine
        self.max_prompt_bytes = 32 * engine.max_model_len + 1024

    def judge(self, prompt: bytes | None, sp: bytes | None, flags: dict) -> tuple[str, str | None, int | None]:
        """(expect, field, max_tokens)."""
        if prompt is None:
            return "invalid", "text_input", None
        if len(prompt) > self.max_prompt_bytes:
            return "invalid", "text_input", None
        try:
            text = prompt.decode("utf-8")
        except UnicodeDecodeError:
            return "invalid", "text_input", None
        if not text:
            return "invalid", "text_input", None
        try:
            params = SamplingParams.from_json(sp.decode("utf-8") if sp is not None else None)
        except UnicodeDecodeError:
            return "invalid", "sampling_parameters", None
        except InvalidRequest as e:
            return "invalid", e.field, None
        try:
            self.engine.check_request(self.engine.tokenize(text), params)
        except InvalidRequest as e:
            return "invalid", e.field, None
        return "ok", None, params.max_tokens


# ----- whole requests --------------------------------------------------------------------------

def _arr(dtype: str, values) -> np.ndarray:
    return np.array(values, dtype=np.object_ if dtype == "BYTES" else bool)


def make_case(idx: int, rng: random.Random, oracle: Oracle, vocab: int) -> Case:
    # The prompt.
    r = rng.random()
    if r < 0.75:
        prompt: bytes | None = random_text(rng, rng.choice([1, 2, 5, 20, 80, 300])).encode()
        plabel = "prompt:unicode"
    else:
        plabel, prompt = rng.choice([
            ("prompt:empty", b""),
            ("prompt:not_utf8", rng.choice([b"\xff\xfe bad", b"ok \xc3\x28", b"\xed\xa0\x80 surrogate", b"\x80"])),
            ("prompt:too_many_bytes", b"word " * (oracle.max_prompt_bytes // 5 + 10)),
            ("prompt:too_many_tokens", ("ab " * 700).encode()),
            ("prompt:near_limit", ("ab " * 180).encode()),
            ("prompt:nul", b"nul \x00 inside"),
            ("prompt:missing", None),
        ])
    # The parameters.
    r = rng.random()
    if r < 0.5:
        sp: bytes | None = json.dumps(valid_params(rng, vocab)).encode()
        slabel = "params:valid"
    elif r < 0.58:
        sp, slabel = None, "params:absent"
    elif r < 0.6:
        sp, slabel = b"", "params:empty_string"
    else:
        sp, slabel = bad_params(rng, vocab)
    flags = {name: rng.random() < 0.5 for name in BOOL_INPUTS if rng.random() < 0.5}
    stream = flags.get("stream", False)
    expect, fld, max_tokens = oracle.judge(prompt, sp, flags)
    label = plabel if plabel != "prompt:unicode" or slabel == "params:valid" else slabel

    transport = rng.choices(["grpc", "http", "http_stream"], [0.75, 0.12, 0.13])[0]
    if transport == "grpc":
        case = Case(idx, label, "grpc", expect, fld, stream=stream, flags=flags, max_tokens=max_tokens)
        if prompt is not None:
            case.tensors.append(("text_input", "BYTES", _arr("BYTES", [prompt])))
        if sp is not None:
            case.tensors.append(("sampling_parameters", "BYTES", _arr("BYTES", [sp])))
        for name, value in flags.items():
            case.tensors.append((name, "BOOL", _arr("BOOL", [value])))
        if rng.random() < 0.22:
            _break_tensors(rng, case)
        return case
    # HTTP: the body is JSON, so only valid UTF-8 strings can be sent; Triton maps fields to inputs.
    if transport == "http":
        flags.pop("stream", None)    # generate wants exactly one response
        stream = False
    try:
        body = {} if prompt is None else {"text_input": prompt.decode("utf-8")}
        if sp is not None:
            body["sampling_parameters"] = sp.decode("utf-8")
    except UnicodeDecodeError:
        body = {"text_input": "fallback prompt", "sampling_parameters": '{"max_tokens": 2}'}
        expect, fld, max_tokens = "ok", None, 2
        label = "http:fallback"
    body.update(flags)
    if "stream" in flags:
        body["stream"] = stream
    case = Case(idx, label, transport, expect, fld, stream=stream, flags=flags, max_tokens=max_tokens)
    if rng.random() < 0.15:
        key, value = rng.choice([("text_input", 5), ("text_input", ["a", "b"]), ("text_input", None),
                                 ("text_input", {"x": 1}), ("stream", "yes"), ("return_logprobs", 1),
                                 ("sampling_parameters", {"max_tokens": 2}), ("exclude_input_in_output", None)])
        body[key] = value
        case.expect, case.field, case.label = "rejected", None, f"http:bad_json_type:{key}"
    case.body = json.dumps(body).encode()
    if rng.random() < 0.03:
        case.body = rng.choice([b"{not json", b"[1, 2]", b"", b'{"text_input": "hi"'])
        case.expect, case.field, case.label = "rejected", None, "http:malformed_body"
    return case


def _break_tensors(rng: random.Random, case: Case) -> None:
    """One Triton-level defect: wrong datatype, wrong shape or an unknown input."""
    names = [t[0] for t in case.tensors]
    kind = rng.choice(["dtype", "shape", "unknown"] if names else ["unknown"])
    if kind == "unknown":
        name = rng.choice(["prompt_typo", "max_tokens", "text_input_2", "temperature", "STREAM"])
        case.tensors.append((name, "BYTES" if name != "max_tokens" else "INT32",
                             np.array([b"x"], dtype=np.object_) if name != "max_tokens" else np.array([3], np.int32)))
        case.expect, case.field, case.label = "rejected", name, "tensor:unknown_input"
        return
    i = rng.randrange(len(names))
    name, dtype, arr = case.tensors[i]
    if kind == "dtype":
        new = rng.choice([d for d in ("BYTES", "BOOL", "INT32", "FP32", "UINT8", "INT64") if d != dtype])
        value = {"BYTES": np.array([b"1"], dtype=np.object_), "BOOL": np.array([True]),
                 "INT32": np.array([1], np.int32), "FP32": np.array([1.0], np.float32),
                 "UINT8": np.array([1], np.uint8), "INT64": np.array([1], np.int64)}[new]
        case.tensors[i] = (name, new, value)
        case.label = "tensor:wrong_dtype"
    else:
        shape = rng.choice([(2,), (1, 1), (0,), (3, 2)])
        flat = np.resize(arr, int(np.prod(shape))) if int(np.prod(shape)) else arr[:0]
        case.tensors[i] = (name, dtype, flat.reshape(shape))
        case.label = "tensor:wrong_shape"
    case.expect, case.field = "rejected", name


# Requests that once broke the server, always sent (besides the random ones).
PINNED = [
    b'{"\\ud800": 1}',                                   # lone surrogate in an unknown key's name
    b'{"max_tokens": 2, "stop": ["\\udfff"], "include_stop_str_in_output": true}',
    b'{"max_tokens": 3, "top_k": 1e30, "top_p": 0.5}',   # top_k beyond int64 in the sampler
    b'{"max_tokens": 3, "top_k": 9223372036854775808, "temperature": 0.5, "top_p": 0.99}',
    b'{"max_tokens": 3, "top_k": "1e19", "top_p": 0.9}',
]


def pinned_cases(start: int, oracle: Oracle) -> list[Case]:
    cases = []
    for i, sp in enumerate(PINNED):
        for stream in (False, True):
            expect, fld, max_tokens = oracle.judge(b"pinned request", sp, {"stream": stream})
            cases.append(Case(start + len(cases), "pinned", "grpc", expect, fld, stream=stream,
                              flags={"stream": stream}, max_tokens=max_tokens, tensors=[
                                  ("text_input", "BYTES", _arr("BYTES", [b"pinned request"])),
                                  ("sampling_parameters", "BYTES", _arr("BYTES", [sp])),
                                  ("stream", "BOOL", _arr("BOOL", [stream]))]))
    return cases
