"""Stop conditions: stop strings (cut, include, streaming hold-back, earliest wins), stop_token_ids,
EOS / ignore_eos, max_tokens.

Expected texts come from a greedy run of the same prompt without stop conditions: greedy decoding is
deterministic, so the stopped run must be a prefix of it.
"""
from __future__ import annotations

import pytest

from engine import SamplingParams
from engine_testing import PROMPTS, copy_checkpoint, drive, edit_json, joined

N = 24


def greedy(**kw):
    kw.setdefault("max_tokens", N)
    return SamplingParams(temperature=0.0, **kw)


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """Greedy runs without stop conditions: {prompt index: (ids, text, tokens, per-token text ends)}."""
    from engine_testing import make_engine
    eng = make_engine(tiny_model_dir)
    ref = {}
    for i, p in enumerate(PROMPTS):
        ids = eng.tokenize(p)
        eng.add_request("ref", ids, greedy(ignore_eos=True))
        outs = drive(eng)["ref"]
        text, toks, reason = joined(outs)
        assert reason == "length" and len(toks) == N and text == eng.tokenizer.decode(toks)
        ends = [len(eng.tokenizer.decode(toks[:k])) for k in range(1, N + 1)]
        ref[i] = (ids, text, toks, ends)
    return ref


def stream(eng, prompt, params, rid="s"):
    eng.add_request(rid, prompt, params)
    return drive(eng)[rid]


def spanning_stop(text, ends, min_start=1, width=4):
    """A stop string that begins inside one token's text and ends inside a later one's, whose first
    occurrence in `text` is where we took it from. Returns (stop, start)."""
    bounds = sorted(set(ends))
    for b in bounds:
        start = b - width // 2
        if start < min_start or b + width // 2 > len(text):
            continue
        stop = text[start:start + width]
        if "\ufffd" in stop or not stop.strip():
            continue
        # must straddle the boundary b: neither half empty, and b is a real token boundary
        if text.find(stop) == start and text[start:b] and text[b:start + width]:
            return stop, start
    raise AssertionError("no suitable stop string in the reference text")


def assert_stream_never_shows(outs, final_text, stop):
    acc = ""
    for o in outs:
        acc += o.text
        assert final_text.startswith(acc), "a delta went beyond the final text"
    assert acc == final_text


@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_stop_string_spanning_tokens_is_cut_and_never_streamed(i, reference, tiny_model_dir, engine_factory):
    ids, text, toks, ends = reference[i]
    stop, start = spanning_stop(text, ends, min_start=3)
    eng = engine_factory(tiny_model_dir)
    outs = stream(eng, ids, greedy(stop=[stop], ignore_eos=True))
    got, got_toks, reason = joined(outs)
    assert reason == "stop"
    assert got == text[:start]
    assert stop not in got
    assert_stream_never_shows(outs, got, stop)
    # generation stopped at the token that completed the stop string
    k = next(k for k, e in enumerate(ends, 1) if e >= start + len(stop))
    assert got_toks == toks[:k]

    outs = stream(eng, ids, greedy(stop=[stop], include_stop_str_in_output=True, ignore_eos=True), "inc")
    got, got_toks, reason = joined(outs)
    assert (got, reason) == (text[:start + len(stop)], "stop")
    assert got_toks == toks[:k]
    assert_stream_never_shows(outs, got, stop)


def test_deltas_hold_back_a_possible_stop_prefix(reference, tiny_model_dir, engine_factory):
    """Until the stop string is complete, the deltas must not contain its first characters either."""
    ids, text, toks, ends = reference[4]
    stop, start = spanning_stop(text, ends, min_start=8, width=6)
    eng = engine_factory(tiny_model_dir)
    outs = stream(eng, ids, greedy(stop=[stop], ignore_eos=True))
    assert len(outs) > 2
    acc = ""
    for o in outs[:-1]:
        acc += o.text
        assert len(acc) <= start
    assert joined(outs)[0] == text[:start]


def test_multiple_stop_strings_earliest_wins(reference, tiny_model_dir, engine_factory):
    ids, text, toks, ends = reference[2]
    early, e_start = spanning_stop(text, ends, min_start=2)
    late_start = next(s for s in range(len(text) - 3, e_start + len(early), -1)
                      if text.find(text[s:s + 3]) == s and "\ufffd" not in text[s:s + 3])
    late = text[late_start:late_start + 3]
    eng = engine_factory(tiny_model_dir)
    for stops in ([late, early], [early, late], [late, "\x00never", early]):
        got, _, reason = joined(stream(eng, ids, greedy(stop=stops, ignore_eos=True)))
        assert (got, reason) == (text[:e_start], "stop"), stops
    got, _, reason = joined(stream(eng, ids, greedy(stop=[late], ignore_eos=True)))
    assert (got, reason) == (text[:late_start], "stop")


@pytest.mark.parametrize("i", [1, 2, 4])
def test_stop_strings_completed_by_the_same_token_earliest_start_wins(i, reference, tiny_model_dir,
                                                                       engine_factory):
    """Two stop strings ending at the same token boundary: the one that starts earlier cuts,
    whatever their order in the list."""
    ids, text, toks, ends = reference[i]
    for b in sorted(set(ends)):
        long_, short = text[b - 6:b], text[b - 2:b]
        if (b - 6 >= 1 and "\ufffd" not in long_ and long_.strip() and text.find(long_) == b - 6
                and text.find(short) == b - 2):
            break
    else:
        raise AssertionError("no suitable boundary")
    eng = engine_factory(tiny_model_dir)
    for stops in ([short, long_], [long_, short]):
        got, _, reason = joined(stream(eng, ids, greedy(stop=stops, ignore_eos=True)))
        assert (got, reason) == (text[:b - 6], "stop"), stops


def test_stop_string_at_the_start_and_absent(reference, tiny_model_dir, engine_factory):
    # A text that starts with whole characters (the random model's output may start with a
    # stray byte, which decodes to U+FFFD; which one does depends on the machine's arithmetic).
    ids, text, toks, ends = next(r for r in reference.values() if "\ufffd" not in r[1][:2])
    eng = engine_factory(tiny_model_dir)
    head = text[:2]
    outs = stream(eng, ids, greedy(stop=[head], ignore_eos=True))
    assert joined(outs)[0] == "" and joined(outs)[2] == "stop"
    outs = stream(eng, ids, greedy(stop=["\x00never there"], ignore_eos=True))
    got, got_toks, reason = joined(outs)
    assert (got, got_toks, reason) == (text, toks, "length")


@pytest.mark.parametrize("i", [0, 3])
def test_min_tokens_holds_stop_strings_back(i, reference, tiny_model_dir, engine_factory):
    """As vLLM: before min_tokens output tokens no stop string ends generation; the first
    occurrence that a later token completes does (it may begin in the earlier text)."""
    ids, text, toks, ends = reference[i]
    stop, start = spanning_stop(text, ends, min_start=2)
    k = next(k for k, e in enumerate(ends, 1) if e >= start + len(stop))   # the completing token
    eng = engine_factory(tiny_model_dir)
    # min_tokens up to k: the stop string is complete at token k, which is allowed to stop
    got, got_toks, reason = joined(stream(eng, ids, greedy(stop=[stop], min_tokens=k, ignore_eos=True)))
    assert (got, got_toks, reason) == (text[:start], toks[:k], "stop")
    # min_tokens past k: that occurrence is skipped; the next one completed at or after
    # min_tokens stops it, or nothing does
    m = k + 1
    later = [s for s in range(len(text)) if text.startswith(stop, s) and s + len(stop) > ends[m - 2]]
    outs = stream(eng, ids, greedy(stop=[stop], min_tokens=m, ignore_eos=True), "m")
    got, got_toks, reason = joined(outs)
    if later:
        k2 = next(k for k, e in enumerate(ends, 1) if e >= later[0] + len(stop))
        assert (got, got_toks, reason) == (text[:later[0]], toks[:k2], "stop")
    else:
        assert (got, got_toks, reason) == (text, toks, "length")
    assert_stream_never_shows(outs, got, stop)


def test_stop_token_ids(reference, tiny_model_dir, engine_factory):
    ids, text, toks, ends = reference[0]
    t = toks[5]
    j = toks.index(t)
    eng = engine_factory(tiny_model_dir)
    got, got_toks, reason = joined(stream(eng, ids, greedy(stop_token_ids=[t], ignore_eos=True)))
    assert reason == "stop"
    assert got_toks == toks[:j + 1]                       # the stop token is reported...
    assert got == eng.tokenizer.decode(toks[:j])          # ...but its text is not
    # include_stop_str_in_output: the stop token's text too (as vLLM)
    got, got_toks, reason = joined(stream(eng, ids, greedy(stop_token_ids=[t], ignore_eos=True,
                                                           include_stop_str_in_output=True), "inc"))
    assert (got, got_toks, reason) == (eng.tokenizer.decode(toks[:j + 1]), toks[:j + 1], "stop")
    # several stop ids: the first one generated wins
    got, got_toks, reason = joined(stream(eng, ids, greedy(stop_token_ids=[toks[9], toks[3]], ignore_eos=True)))
    assert got_toks == toks[:toks.index(toks[3]) + 1] and reason == "stop"


def _with_eos(src, dst, eos, where):
    copy_checkpoint(src, dst)
    if where == "generation_config":
        edit_json(dst / "generation_config.json", lambda c: c.update(eos_token_id=[eos]))
    else:
        (dst / "generation_config.json").unlink()
        edit_json(dst / "config.json", lambda c: c.update(eos_token_id=eos))
    return dst


@pytest.mark.parametrize("where", ["generation_config", "config"])
def test_eos_stops_unless_ignore_eos(where, reference, tiny_model_dir, engine_factory, tmp_path):
    """Declare a token the model generates greedily as EOS: generation stops there."""
    ids, text, toks, ends = reference[3]
    eos = toks[4]
    j = toks.index(eos)
    d = _with_eos(tiny_model_dir, tmp_path / "eos", eos, where)
    eng = engine_factory(d)
    assert eng.model_config.eos_token_ids == (eos,)
    got, got_toks, reason = joined(stream(eng, ids, greedy()))
    assert (got_toks, reason) == (toks[:j + 1], "stop")
    got, got_toks, reason = joined(stream(eng, ids, greedy(ignore_eos=True)))
    assert (got, got_toks, reason) == (text, toks, "length")
    # min_tokens keeps EOS from being chosen early: the continuation diverges from the reference
    got, got_toks, reason = joined(stream(eng, ids, greedy(min_tokens=j + 3)))
    assert eos not in got_toks[:j + 3] and len(got_toks) >= j + 3


def test_real_eos_is_in_stop_ids(tiny_model_dir, engine_factory):
    eng = engine_factory(tiny_model_dir)
    eos = eng.tokenizer.token_to_id("<|end_of_text|>")
    assert eng.model_config.eos_token_ids == (eos,)
    seq = eng.add_request("a", [0, 5, 6], greedy())
    assert eos in seq.stop_ids
    seq2 = eng.add_request("b", [0, 5, 6], greedy(ignore_eos=True, stop_token_ids=[9]))
    assert seq2.stop_ids == {9}
    drive(eng)


@pytest.mark.parametrize("max_tokens", [1, 2, 7])
def test_max_tokens_finishes_with_length(max_tokens, reference, tiny_model_dir, engine_factory):
    ids, text, toks, ends = reference[1]
    eng = engine_factory(tiny_model_dir)
    outs = stream(eng, ids, greedy(max_tokens=max_tokens, ignore_eos=True))
    got, got_toks, reason = joined(outs)
    assert (got_toks, reason) == (toks[:max_tokens], "length")
    assert got == eng.tokenizer.decode(toks[:max_tokens])
    assert len(outs) == max_tokens                         # one output per generated token
