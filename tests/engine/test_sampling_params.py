"""SamplingParams.from_json / from_dict: accepted forms, and every refusal is an InvalidRequest whose
`.field` names the culprit."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import InvalidRequest, SamplingParams
from engine.sampling_params import ACCEPTED_ONLY_AS_DEFAULT, MAX_LOGPROBS, MAX_STOP_STRING_CHARS, MAX_STOP_STRINGS

FIELDS = ["max_tokens", "min_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stop_token_ids",
          "ignore_eos", "include_stop_str_in_output", "repetition_penalty", "presence_penalty",
          "frequency_penalty", "logprobs", "skip_special_tokens"]


def refused(text_or_obj, field):
    with pytest.raises(InvalidRequest) as err:
        if isinstance(text_or_obj, str) or text_or_obj is None:
            SamplingParams.from_json(text_or_obj)
        else:
            SamplingParams.from_json(json.dumps(text_or_obj))
    assert err.value.field == field, str(err.value)
    assert str(err.value).startswith(f"{field}: ")
    return str(err.value)


def test_fields_are_the_documented_ones():
    from dataclasses import fields
    assert sorted(f.name for f in fields(SamplingParams)) == sorted(FIELDS)


def test_empty_and_defaults():
    assert SamplingParams.from_json(None) == SamplingParams()
    assert SamplingParams.from_json("") == SamplingParams()
    assert SamplingParams.from_json("{}") == SamplingParams()
    p = SamplingParams()
    assert p.max_tokens == 16 and p.temperature == 1.0 and p.top_p == 1.0 and p.top_k == -1
    assert not p.greedy and not p.has_penalties


def test_full_valid_object():
    obj = {"max_tokens": 128, "min_tokens": 2, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 7,
           "stop": ["\n\n", "END"], "stop_token_ids": [1, 2], "ignore_eos": True,
           "include_stop_str_in_output": True, "repetition_penalty": 1.1, "presence_penalty": -0.5,
           "frequency_penalty": 0.5, "logprobs": 5, "skip_special_tokens": False}
    p = SamplingParams.from_json(json.dumps(obj))
    for k, v in obj.items():
        assert getattr(p, k) == v, k
    assert p.has_penalties and not p.greedy


def test_numbers_as_strings_and_other_lenient_forms():
    p = SamplingParams.from_json(json.dumps({
        "max_tokens": "128", "min_tokens": " 3 ", "temperature": "0", "top_p": "0.5", "top_k": "-1",
        "seed": "42", "stop": "END", "stop_token_ids": ["7", 8.0], "ignore_eos": "true",
        "include_stop_str_in_output": "False", "repetition_penalty": "1.5", "logprobs": "2",
        "skip_special_tokens": 0, "presence_penalty": 1, "frequency_penalty": "-1.5"}))
    assert p.max_tokens == 128 and isinstance(p.max_tokens, int)
    assert p.min_tokens == 3 and p.temperature == 0.0 and p.greedy
    assert p.top_p == 0.5 and p.top_k == -1 and p.seed == 42 and isinstance(p.seed, int)
    assert p.stop == ["END"] and p.stop_token_ids == [7, 8]
    assert p.ignore_eos is True and p.include_stop_str_in_output is False and p.skip_special_tokens is False
    assert p.repetition_penalty == 1.5 and p.logprobs == 2
    assert p.presence_penalty == 1.0 and p.frequency_penalty == -1.5
    assert SamplingParams.from_json('{"max_tokens": 12.0}').max_tokens == 12
    assert SamplingParams.from_json('{"max_tokens": "1e2"}').max_tokens == 100
    assert SamplingParams.from_json('{"seed": null, "logprobs": null}').seed is None
    assert SamplingParams.from_json('{"top_k": 0}').top_k == 0
    # as vLLM's clients send them: null lists are the defaults, one completion per request
    p = SamplingParams.from_json('{"stop": null, "stop_token_ids": null, "n": 1, "max_tokens": 5}')
    assert p.stop == [] and p.stop_token_ids == [] and p.max_tokens == 5
    assert SamplingParams.from_json('{"n": "1"}') == SamplingParams()


def test_unknown_key_named():
    msg = refused({"max_tokens": 3, "temprature": 0.5}, "temprature")
    assert "unknown" in msg
    refused({"zzz": 1, "aaa": 2}, "aaa")        # the first in sorted order, deterministically
    refused({"": 1}, "")


@pytest.mark.parametrize("obj, field", [
    ({"max_tokens": "ten"}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": "1.5"}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": [1]}, "max_tokens"),
    ({"max_tokens": {"v": 1}}, "max_tokens"),
    ({"top_k": "nan"}, "top_k"),
    ({"top_k": "inf"}, "top_k"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": False}, "temperature"),
    ({"temperature": None}, "temperature"),
    ({"temperature": [0.5]}, "temperature"),
    ({"temperature": "nan"}, "temperature"),
    ({"temperature": "Infinity"}, "temperature"),
    ({"top_p": {}}, "top_p"),
    ({"seed": "x"}, "seed"),
    ({"stop": 5}, "stop"),
    ({"stop": ["a", 5]}, "stop"),
    ({"n": 2}, "n"),
    ({"n": "two"}, "n"),
    ({"stop_token_ids": 5}, "stop_token_ids"),
    ({"stop_token_ids": ["a"]}, "stop_token_ids"),
    ({"stop_token_ids": [1.5]}, "stop_token_ids"),
    ({"ignore_eos": "yes"}, "ignore_eos"),
    ({"ignore_eos": 2}, "ignore_eos"),
    ({"ignore_eos": None}, "ignore_eos"),
    ({"include_stop_str_in_output": "1"}, "include_stop_str_in_output"),
    ({"skip_special_tokens": []}, "skip_special_tokens"),
    ({"logprobs": "many"}, "logprobs"),
    ({"repetition_penalty": "x"}, "repetition_penalty"),
])
def test_wrong_types(obj, field):
    refused(obj, field)


@pytest.mark.parametrize("obj, field", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"min_tokens": -1}, "min_tokens"),
    ({"min_tokens": 17}, "min_tokens"),                       # > default max_tokens (16)
    ({"max_tokens": 4, "min_tokens": 5}, "min_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": 100.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"top_p": -1}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"repetition_penalty": 1e-300}, "repetition_penalty"),
    ({"repetition_penalty": 0.0099}, "repetition_penalty"),
    ({"repetition_penalty": 10.5}, "repetition_penalty"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -2.01}, "frequency_penalty"),
    ({"stop": [""]}, "stop"),
    ({"stop": ["x" * (MAX_STOP_STRING_CHARS + 1)]}, "stop"),
    ({"stop": [str(i) for i in range(MAX_STOP_STRINGS + 1)]}, "stop"),
    ({"stop_token_ids": [3, -1]}, "stop_token_ids"),
    ({"logprobs": -1}, "logprobs"),
    ({"logprobs": MAX_LOGPROBS + 1}, "logprobs"),
])
def test_out_of_range(obj, field):
    refused(obj, field)


@pytest.mark.parametrize("obj", [
    {"max_tokens": 1}, {"min_tokens": 16}, {"temperature": 0}, {"temperature": 100}, {"top_p": 1},
    {"top_p": 1e-9}, {"seed": 0}, {"seed": 2**63 - 1}, {"repetition_penalty": 10},
    {"repetition_penalty": 0.01},
    {"presence_penalty": -2}, {"frequency_penalty": 2}, {"stop": ["x" * MAX_STOP_STRING_CHARS]},
    {"stop": [str(i) for i in range(MAX_STOP_STRINGS)]}, {"logprobs": 0}, {"logprobs": MAX_LOGPROBS},
    {"stop_token_ids": []}, {"stop": []},
])
def test_limits_are_inclusive(obj):
    p = SamplingParams.from_json(json.dumps(obj))
    for k, v in obj.items():
        assert getattr(p, k) == v


@pytest.mark.parametrize("text", ["{", "{'max_tokens': 3}", "max_tokens=3", "{\"a\": }", "[" * 50000,
                                  "{\"max_tokens\": 3} trailing", "\x00", "nul"])
def test_malformed_json(text):
    refused(text, "sampling_parameters")


@pytest.mark.parametrize("text", ["[]", "[1, 2]", "3", "\"max_tokens\"", "null", "true"])
def test_non_object_json(text):
    msg = refused(text, "sampling_parameters")
    assert "object" in msg


def test_oversized_json():
    body = json.dumps({"stop": ["x" * 100] * 700})
    assert len(body) > 64 * 1024
    refused(body, "sampling_parameters")
    with pytest.raises(InvalidRequest) as err:
        SamplingParams.from_json(json.dumps({"max_tokens": 5}), max_json_bytes=10)
    assert err.value.field == "sampling_parameters"
    assert SamplingParams.from_json(json.dumps({"max_tokens": 5}), max_json_bytes=100).max_tokens == 5


def test_oversized_json_is_measured_in_bytes():
    """The limit is max_json_bytes: text of multi-byte characters is bigger than its length."""
    body = json.dumps({"stop": ["中" * 200] * 10}, ensure_ascii=False)
    assert len(body) < 4000 < len(body.encode("utf-8"))
    with pytest.raises(InvalidRequest) as err:
        SamplingParams.from_json(body, max_json_bytes=4000)
    assert err.value.field == "sampling_parameters"


def test_huge_numbers_are_refused_not_crashing():
    refused('{"temperature": ' + "9" * 400 + "}", "temperature")       # int too large for a float
    refused('{"max_tokens": ' + "9" * 5000 + "}", "sampling_parameters")  # beyond Python's int parsing limit
    refused('{"temperature": 1e400}', "temperature")                    # inf
    refused('{"top_p": NaN}', "top_p")
    assert SamplingParams.from_json('{"max_tokens": ' + "9" * 40 + "}").max_tokens == int("9" * 40)


# ----- property: any dict parses or raises InvalidRequest ------------------------------------------
def _numbers():
    return st.one_of(
        st.integers(), st.integers(min_value=-(10**400), max_value=10**400),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0, 1, -1, 2**63, 2**63 - 1, 0.5, 1.0, 100.0, 1e-9, 1e308, 10**400, -(10**309)]))


def _strings():
    return st.one_of(
        st.text(max_size=12),
        st.sampled_from(["128", " 7 ", "1e2", "1.5", "-1", "nan", "NaN", "inf", "-inf", "Infinity", "1e400",
                         "0x10", "1_000", "true", "false", "True", "", "   ", "１２", "٣"]),
        _numbers().map(str))


_scalars = st.one_of(st.none(), st.booleans(), _numbers(), _strings())
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                       max_leaves=8)
_keys = st.one_of(st.sampled_from(FIELDS), st.sampled_from(FIELDS), st.text(max_size=10))


def _check(obj):
    try:
        p = SamplingParams.from_dict(obj)
    except InvalidRequest as e:
        unknown = sorted(k for k in obj if k not in FIELDS and k not in ACCEPTED_ONLY_AS_DEFAULT)
        if unknown:
            assert e.field == unknown[0]
        else:
            assert e.field in FIELDS or e.field in ACCEPTED_ONLY_AS_DEFAULT
        return None
    # valid: types are what the engine relies on
    assert isinstance(p.max_tokens, int) and not isinstance(p.max_tokens, bool) and p.max_tokens >= 1
    assert isinstance(p.min_tokens, int) and 0 <= p.min_tokens <= p.max_tokens
    assert isinstance(p.top_k, int) and p.top_k >= -1
    for name in ("temperature", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
        v = getattr(p, name)
        assert isinstance(v, float) and math.isfinite(v), name
    assert p.seed is None or (isinstance(p.seed, int) and 0 <= p.seed < 2**63)
    assert all(isinstance(s, str) and s for s in p.stop)
    assert all(isinstance(t, int) and t >= 0 for t in p.stop_token_ids)
    for name in ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens"):
        assert isinstance(getattr(p, name), bool)
    return p


@settings(max_examples=2000, deadline=None, derandomize=True, database=None)
@given(st.dictionaries(_keys, _values, max_size=6))
def test_property_random_dicts_parse_or_raise_invalid_request(obj):
    _check(obj)
    # the same through JSON text (where representable)
    try:
        text = json.dumps(obj)
    except (ValueError, TypeError):
        return
    try:
        SamplingParams.from_json(text)
    except InvalidRequest:
        pass


@settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(st.text(max_size=60))
def test_property_random_text_never_crashes(text):
    try:
        SamplingParams.from_json(text)
    except InvalidRequest as e:
        assert e.field == "sampling_parameters" or e.field in json.loads(text)


@settings(max_examples=1500, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(FIELDS), _values)
def test_property_any_value_for_one_known_field(key, value):
    """One known key with any JSON-like value: valid params, or InvalidRequest naming that key
    (or min_tokens, which is validated against max_tokens)."""
    try:
        p = _check({key: value})
    except InvalidRequest as e:   # pragma: no cover - _check handles these
        raise AssertionError(e)
    if p is None:
        with pytest.raises(InvalidRequest) as err:
            SamplingParams.from_dict({key: value})
        assert err.value.field in (key, "min_tokens")
