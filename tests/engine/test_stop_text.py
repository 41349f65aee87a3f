"""The text of a request that ends on a stop token, a stop string or an abort, with characters split
across tokens: tokens are fed one at a time through the engine's own output path (_append_token,
_output; no model steps), with the tiny checkpoint's byte-level tokenizer (through both
detokenizers) and with a SentencePiece byte-fallback tokenizer in its place.

vLLM's semantics: a stop token's text is left out unless include_stop_str_in_output, and with it a
character the stop token completes (never a dangling U+FFFD for it); stop strings are checked in
the new text of every token, a stop token's included; an abort never shows the start of a stop
string that might have matched."""
from __future__ import annotations

import pytest
from tokenizers import decoders

from engine import SamplingParams
from engine_testing import complete_utf8_prefix, token_bytes
from test_detokenizer import _byte_fallback_tokenizer

KINDS = ["byte_level", "general", "byte_fallback"]


@pytest.fixture(params=KINDS)
def eng(request, tiny_model_dir, engine_factory):
    eng = engine_factory(tiny_model_dir)
    if request.param != "byte_level":
        eng.byte_tokens = None   # the general IncrementalDetokenizer
    if request.param == "byte_fallback":
        eng.tokenizer = _byte_fallback_tokenizer()
    return eng


def bytes_of(eng, t: int) -> bytes:
    tok = eng.tokenizer
    if isinstance(tok.decoder, decoders.ByteLevel):
        return token_bytes(tok, t)
    piece = tok.id_to_token(t)
    if piece.startswith("<0x"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("▁", " ").encode()


def encode(eng, text: str) -> list[int]:
    ids = eng.tokenizer.encode(text, add_special_tokens=False).ids
    if eng.tokenizer.id_to_token(ids[0]) == "▁":   # SentencePiece's space before the text's start
        ids = ids[1:]
    return ids


def decoded(eng, ids: list[int]) -> str:
    """tokenizer.decode(ids) as the output's text: a leading space that a SentencePiece decoder
    strips at the start of a text is kept, as the output continues the prompt."""
    tok = eng.tokenizer
    if tok.token_to_id("▁x") is None:
        return tok.decode(ids)
    return tok.decode([tok.token_to_id("▁x")] + ids)[len("x"):]


def completing_token(eng, text: str) -> tuple[list[int], int]:
    """The ids of `text` and the index of a token that completes a character begun by the token
    before it."""
    ids = encode(eng, text)
    data = b""
    for k, t in enumerate(ids):
        b = bytes_of(eng, t)
        if k and not complete_utf8_prefix(data)[1] and b and (b[0] & 0xC0) == 0x80 \
                and complete_utf8_prefix(data + b[:4])[1]:
            return ids, k
        data += b
    raise AssertionError(f"no token completes a split character in {text!r}")


def feed(eng, params: SamplingParams, tokens: list[int], rid: str = "r", abort: bool = False):
    """Feed `tokens` as the request's output (as _read_tokens does), then abort if asked; returns
    (text, token ids, finish reason) of the outputs, checked to be well formed."""
    seq = eng.add_request(rid, [1, 5, 6], params)
    outs = []
    for t in tokens:
        eng._append_token(seq, t, 0.0, None)
        if seq.finished:
            eng.scheduler.finish(seq)
            del eng.seqs[rid]
        outs.append(eng._output(seq))
        if seq.finished:
            break
    if abort and not seq.finished:
        outs.append(eng.abort(rid))
    assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]
    text = "".join(o.text for o in outs)
    return text, [t for o in outs for t in o.token_ids], outs[-1].finish_reason


TEXT = "ption 有中文 😀 Größe"


def test_stop_token_completing_a_character_takes_it_out(eng):
    """The stop token completes a character whose first bytes were held back: without the stop
    token's text, that whole character is left out, not shown as U+FFFD."""
    ids, k = completing_token(eng, TEXT)
    stop = ids[k]
    head = complete_utf8_prefix(b"".join(bytes_of(eng, t) for t in ids[:k]))[0]
    assert ids.index(stop) == k and head and "\ufffd" not in head
    text, toks, reason = feed(eng, SamplingParams(max_tokens=50, stop_token_ids=[stop]), ids)
    assert (text, toks, reason) == (head, ids[:k + 1], "stop")
    # with the stop token's text: decoding up to and including it
    text, toks, reason = feed(eng, SamplingParams(max_tokens=50, stop_token_ids=[stop],
                                                  include_stop_str_in_output=True), ids, "inc")
    assert (text, toks, reason) == (decoded(eng, ids[:k + 1]), ids[:k + 1], "stop")


def test_stop_token_that_completes_no_character_keeps_the_text_before_it(eng):
    """A stop token that does not carry on the held-back character (EOS): the text is decode of
    the tokens before it, as the character is unfinished whether or not the stop token is there."""
    ids, k = completing_token(eng, TEXT)
    eos = 2 if eng.byte_tokens is None and eng.tokenizer.token_to_id("</s>") == 2 else \
        eng.tokenizer.token_to_id("<|end_of_text|>")
    text, toks, reason = feed(eng, SamplingParams(max_tokens=50, stop_token_ids=[eos]), ids[:k] + [eos])
    assert (text, toks, reason) == (decoded(eng, ids[:k]), ids[:k] + [eos], "stop")
    # and characters complete before it are not lost (a byte-fallback run held back to its end)
    whole = encode(eng, "ok 😀")
    text, _, reason = feed(eng, SamplingParams(max_tokens=50, stop_token_ids=[eos]), whole + [eos], "w")
    assert (text, reason) == ("ok 😀", "stop")


def test_stop_string_completed_by_the_stop_tokens_text(eng):
    """As vLLM, which checks stop strings in every token's new text: a stop string that the stop
    token's (included) text completes cuts the text there. Left out, its text completes nothing."""
    def candidates():
        for words in ("hello world, and more", "x hi é 中 x"):
            ids = encode(eng, words)
            for k in range(2, len(ids)):
                before, full = decoded(eng, ids[:k]), decoded(eng, ids[:k + 1])
                stop_str = full[len(before) - 2:len(before) + 1]   # spans the stop token's first character
                if ids.index(ids[k]) == k and len(full) - len(before) >= 2 and stop_str not in before:
                    yield ids, k, before, full, stop_str
    ids, k, before, full, stop_str = next(candidates())
    text, toks, reason = feed(eng, SamplingParams(max_tokens=50, stop_token_ids=[ids[k]], stop=[stop_str],
                                                  include_stop_str_in_output=True), ids)
    assert (text, toks, reason) == (full[:len(before) + 1], ids[:k + 1], "stop")
    assert text.endswith(stop_str)
    text, toks, reason = feed(eng, SamplingParams(max_tokens=50, stop_token_ids=[ids[k]], stop=[stop_str]),
                              ids, "exc")
    assert (text, toks, reason) == (before, ids[:k + 1], "stop")


def test_abort_never_shows_the_start_of_a_stop_string(eng):
    """Text held back because it may begin a stop string is dropped by an abort; the rest of the
    held-back text is sent."""
    ids = encode(eng, "hello world")
    full = decoded(eng, ids)
    assert full.endswith("world")
    text, toks, reason = feed(eng, SamplingParams(max_tokens=50, stop=["rld!", "zzzzzz"]), ids, abort=True)
    assert (text, toks, reason) == (full[:-3], ids, "abort")           # "rld" might have become "rld!"
    text, _, reason = feed(eng, SamplingParams(max_tokens=50, stop=["d?", "zzzzzz"]), ids, "b", abort=True)
    assert (text, reason) == (full[:-1], "abort")                      # only "d" could start one
    text, _, reason = feed(eng, SamplingParams(max_tokens=50, stop=["zzzzzz"]), ids, "c", abort=True)
    assert (text, reason) == (full, "abort")                           # nothing could


def test_abort_drops_an_unfinished_character(eng):
    ids, k = completing_token(eng, TEXT)
    head = complete_utf8_prefix(b"".join(bytes_of(eng, t) for t in ids[:k]))[0]
    text, toks, reason = feed(eng, SamplingParams(max_tokens=50), ids[:k], abort=True)
    assert (text, toks, reason) == (head, ids[:k], "abort")
    # held-back complete characters (a byte-fallback run) are sent, and checked for stop strings
    whole = encode(eng, "ok 😀")
    text, _, reason = feed(eng, SamplingParams(max_tokens=50), whole, "w", abort=True)
    assert (text, reason) == ("ok 😀", "abort")
    text, _, reason = feed(eng, SamplingParams(max_tokens=50, stop=["k 😀"]), whole, "s", abort=True)
    # (a byte-level tokenizer shows the emoji, and stops on it, with its last token; the others
    # hold it back and the abort's flush completes the stop string: a stop, not an abort, either way)
    assert (text, reason) == ("o", "stop")
