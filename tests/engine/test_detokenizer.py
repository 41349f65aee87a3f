"""Incremental detokenization with the trained byte-level BPE tokenizer of a tiny checkpoint, by
both detokenizers: the general one (a window of tokens through tokenizer.decode) and the byte-level
one the engine uses for such tokenizers (token bytes through an incremental UTF-8 decoder).

Ground truth: `tokenizer.decode` of all tokens, and the raw bytes of each token (computed here from
the byte-level alphabet), which say when the text so far ends on a character boundary.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from engine import SamplingParams
from engine.detokenizer import ByteLevelDetokenizer, ByteLevelTokens, IncrementalDetokenizer
from engine_testing import PROMPTS, complete_utf8_prefix, run_requests, token_bytes

TEXTS = [
    "Emoji: 😀 😃 🚀 🎉 👍🏽 🇫🇷 ❤️ ✨ 🤖 — and a family 👨‍👩‍👧‍👦 with zero-width joiners.",
    "昔々、小さなモデルがありました。从前有一个小模型，它一个一个地生成词元。你好，世界！",
    "Il était une fois… Ça marche très bien, n'est-ce pas ? Größe, Straße, Übermäßig, Ångström, naïve.",
    "Mixed: Привет, мир! 안녕하세요 مرحبا بالعالم नमस्ते दुनिया שלום Γειά σου κόσμε ไทย",
    "Combining: e\u0301 a\u0300 n\u0303; math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑∫√∞; hieroglyph 𓀀; ligature ﷽; CJK ext 𠀀𠀁.",
    "code = {'k': \"v\"}  # ascii\n\tindent\r\n" + "😀" * 7 + "é" * 5 + "中" * 9,
]
PROMPT_TEXTS = ["", "Start:", "昔々、小さな", "Emoji 🚀 then"]


@pytest.fixture(scope="module")
def tok(tiny_model_dir) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))


@pytest.fixture(params=["general", "byte_level"])
def make(request, tok):
    """A detokenizer factory (prompt ids, skip_special) for each implementation."""
    if request.param == "general":
        return lambda prompt_ids, skip_special=True: IncrementalDetokenizer(tok, prompt_ids, skip_special)
    assert ByteLevelTokens.supports(tok)
    tokens = ByteLevelTokens(tok)
    return lambda prompt_ids, skip_special=True: ByteLevelDetokenizer(tokens, skip_special)


def stream(make, prompt_ids, ids, skip_special=True):
    d = make(prompt_ids, skip_special)
    pieces = [d.add(t) for t in ids]
    return pieces, d.flush()


def check_stream(tok, make, prompt_ids, ids, skip_special=True):
    """All the properties of one incremental decode; returns the pieces."""
    d = make(prompt_ids, skip_special)
    final = tok.decode(ids, skip_special_tokens=skip_special)
    emitted = ""
    pieces = []
    data = b""
    for k, t in enumerate(ids):
        piece = d.add(t)
        assert isinstance(piece, str)
        pieces.append(piece)
        emitted += piece
        data += token_bytes(tok, t, skip_special)
        if "\ufffd" not in final:
            assert "\ufffd" not in piece, f"piece {piece!r} after token {k} holds half a character"
        # never ahead of what the tokens so far determine...
        assert data.decode("utf-8", errors="replace").startswith(emitted)
        assert final.startswith(emitted)
        # ...and never behind: on a character boundary everything so far has been emitted
        text_so_far, on_boundary = complete_utf8_prefix(data)
        if on_boundary:
            assert emitted == text_so_far, f"held back text at a character boundary after token {k}"
    tail = d.flush()
    assert emitted + tail == final
    assert d.flush() == ""
    return pieces


def test_token_bytes_agree_with_the_tokenizer(tok):
    """The independent byte view used below is right."""
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert b"".join(token_bytes(tok, t) for t in ids).decode("utf-8") == text == tok.decode(ids)


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
@pytest.mark.parametrize("prompt", PROMPT_TEXTS, ids=range(len(PROMPT_TEXTS)))
def test_multilingual_text_token_by_token(tok, make, text, prompt):
    prompt_ids = tok.encode(prompt).ids                  # with BOS, as the engine's prompts
    ids = tok.encode(text, add_special_tokens=False).ids
    pieces = check_stream(tok, make, prompt_ids, ids)
    assert "".join(pieces) == text                       # valid text: nothing left for flush
    # the test means something: some characters really are split across tokens
    splits = sum(1 for t in ids if not _is_complete(token_bytes(tok, t)))
    if any(ord(c) > 0x7F for c in text):
        assert splits > 0 and "" in pieces


def _is_complete(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_long_text_crosses_the_window_trim(tok, make):
    text = " ".join(TEXTS) * 3
    ids = tok.encode(text, add_special_tokens=False).ids
    assert len(ids) > 300
    pieces = check_stream(tok, make, tok.encode("Hello").ids, ids)
    assert "".join(pieces) == text


def test_special_tokens_skipped_or_kept(tok, make):
    eos = tok.token_to_id("<|end_of_text|>")
    ids = tok.encode("abc 😀", add_special_tokens=False).ids
    mixed = ids[:2] + [eos] + ids[2:] + [eos]
    pieces, tail = stream(make, [], mixed, skip_special=True)
    assert "".join(pieces) + tail == "abc 😀"
    pieces, tail = stream(make, [], mixed, skip_special=False)
    assert "".join(pieces) + tail == tok.decode(mixed, skip_special_tokens=False)
    assert ("".join(pieces) + tail).count("<|end_of_text|>") == 2


def test_flush_returns_an_unfinished_character_as_replacement(tok, make):
    ids = tok.encode("ok 😀", add_special_tokens=False).ids
    # drop the last token: the emoji is cut in the middle
    cut = next(i for i in range(len(ids), 0, -1) if not _is_complete(b"".join(token_bytes(tok, t) for t in ids[:i])))
    pieces, tail = stream(make, [], ids[:cut])
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) + tail == tok.decode(ids[:cut])
    assert tail.endswith("\ufffd")


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_token_sequences(tok, make, data):
    """Any token sequence (even invalid UTF-8, as a random model emits) decodes to exactly
    tokenizer.decode, pieces never run ahead, and valid text is never held back."""
    vocab = tok.get_vocab_size()
    ids = data.draw(st.lists(st.integers(3, vocab - 1), min_size=1, max_size=80))
    prompt = data.draw(st.sampled_from(PROMPT_TEXTS))
    check_stream(tok, make, tok.encode(prompt).ids, ids)


def test_random_slices_of_multilingual_encodings(tok, make):
    rng = random.Random(0)
    all_ids = tok.encode(" ".join(TEXTS), add_special_tokens=False).ids
    for _ in range(200):
        a = rng.randrange(len(all_ids))
        b = rng.randrange(a + 1, min(len(all_ids), a + 60) + 1)
        check_stream(tok, make, tok.encode(rng.choice(PROMPT_TEXTS)).ids, all_ids[a:b])


# ----- through the engine -------------------------------------------------------------------------
def test_engine_streamed_text_equals_decode_of_tokens(checkpoint, engine_factory):
    d = checkpoint("gqa")
    eng = engine_factory(d)
    prompts = [eng.tokenize(p) for p in PROMPTS] + [eng.tokenize(t) for t in TEXTS[:3]]
    params = [SamplingParams(temperature=t, seed=i, max_tokens=40, ignore_eos=True)
              for i, t in enumerate([0.0, 1.0, 1.5, 0.0, 1.2, 0.8, 1.0, 2.0])]
    for i, (text, toks, reason) in enumerate(run_requests(eng, prompts, params)):
        assert reason == "length" and len(toks) == 40
        assert text == eng.tokenizer.decode(toks), f"request {i}"


def test_engine_streams_multilingual_token_sequences_cleanly(checkpoint, engine_factory, tok):
    """Feed a multilingual encoding through the engine's own output path (the engine's detokenizer
    and _output), one token per step, and check the deltas."""
    d = checkpoint("gqa")
    eng = engine_factory(d)
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        seq = eng.add_request("t", eng.tokenize("Say:"), SamplingParams(max_tokens=len(ids), ignore_eos=True))
        deltas = []
        for t in ids:
            eng._append_token(seq, t, 0.0, None)
            out = eng._output(seq)
            assert "\ufffd" not in out.text
            deltas.append(out.text)
        assert seq.finished and seq.finish_reason == "length"
        assert "".join(deltas) == text
        eng.abort("t")


def test_ids_outside_the_vocabulary_decode_to_nothing(tok, make):
    """A model's vocabulary can be larger than its tokenizer's; tokenizer.decode skips such ids."""
    ids = tok.encode("abc 😀", add_special_tokens=False).ids
    mixed = ids[:1] + [tok.get_vocab_size() + 5] + ids[1:]
    pieces, tail = stream(make, [], mixed)
    assert "".join(pieces) + tail == tok.decode(mixed) == "abc 😀"


def test_the_byte_level_path_is_only_taken_for_byte_level_tokenizers(tok):
    from tokenizers import decoders, models, pre_tokenizers

    from engine.detokenizer import make_detokenizer
    assert isinstance(make_detokenizer(tok, [], True, ByteLevelTokens(tok)), ByteLevelDetokenizer)
    sp = Tokenizer(models.WordLevel({"▁hello": 0, "▁world": 1, "<unk>": 2}, unk_token="<unk>"))
    sp.pre_tokenizer = pre_tokenizers.Metaspace()
    sp.decoder = decoders.Metaspace()
    assert not ByteLevelTokens.supports(sp)
    d = make_detokenizer(sp, [], True, None)
    assert isinstance(d, IncrementalDetokenizer)
    assert d.add(0) + d.add(1) + d.flush() == sp.decode([0, 1]) == "hello world"


def test_engine_uses_the_byte_level_detokenizer(checkpoint, engine_factory):
    eng = engine_factory(checkpoint("gqa"))
    seq = eng.add_request("b", eng.tokenize("Hi"), SamplingParams(max_tokens=4))
    assert eng.byte_tokens is not None and isinstance(seq.detokenizer, ByteLevelDetokenizer)
    eng.abort("b")


# ----- SentencePiece with byte fallback (Llama 2, Mistral): the general detokenizer -----------------
def _byte_fallback_tokenizer() -> Tokenizer:
    """A small SentencePiece-style BPE: "▁" for spaces, a few merged pieces, and every byte as a
    "<0xNN>" token for what the pieces cannot spell (emoji here)."""
    from tokenizers import AddedToken, decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    pieces = ["▁", "h", "i", "x", "é", "中", "▁h", "▁x", "hi", "▁hi", "▁é", "▁中"]
    for piece in pieces:
        vocab[piece] = len(vocab)
    merges = [("▁", "h"), ("▁", "x"), ("h", "i"), ("▁h", "i"), ("▁", "é"), ("▁", "中")]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    return tok


def _streamed_after_prompt(tok, prompt, out):
    d = IncrementalDetokenizer(tok, prompt, True)
    return "".join(d.add(t) for t in out) + d.flush()


def test_byte_fallback_characters_right_after_the_prompt():
    """A prompt ending in an emoji spelled in byte tokens: the window over its last tokens began
    inside a character, and the ByteFallback decoder then turned the generated emoji's bytes into
    U+FFFD as well."""
    tok = _byte_fallback_tokenizer()
    emoji = lambda text: [3 + b for b in text.encode()]   # noqa: E731
    assert tok.decode(emoji("😀")) == "😀"
    x = tok.token_to_id("▁x")
    for prompt_tail in ("😀😀", "é😀", "中", "😀 hi"):
        prompt = [1] + tok.encode("hi", add_special_tokens=False).ids + emoji(prompt_tail)
        for out in (emoji("😀") + [x], emoji("中é") + [x], [x] + emoji("😀")):
            expected = tok.decode(prompt + out)[len(tok.decode(prompt)):]
            assert "\ufffd" not in expected
            assert _streamed_after_prompt(tok, prompt, out) == expected, (prompt_tail, out)


def test_byte_fallback_random_sequences():
    """Random prompts and outputs mixing pieces and byte-spelled characters: the streamed text is
    decode(prompt + output) less decode(prompt) wherever that is well defined."""
    tok = _byte_fallback_tokenizer()
    rng = random.Random()
    for _ in range(1000):
        def spell(n):
            ids = []
            for ch in rng.choices(["hi", " x", "é", "中", "😀", " "], k=n):
                ids += [3 + b for b in ch.encode()] if rng.random() < 0.5 else tok.encode(ch, add_special_tokens=False).ids
            return ids
        prompt, out = [1] + spell(rng.randint(1, 6)), spell(rng.randint(1, 8))
        full, head = tok.decode(prompt + out), tok.decode(prompt)
        if "\ufffd" in full or not full.startswith(head):
            continue
        assert _streamed_after_prompt(tok, prompt, out) == full[len(head):], (prompt, out)


# ----- the streamed text is tokenizer.decode(output ids), whatever the prompt ends with -----------
def _fresh_rng():
    """A new seed each run (printed with a failure, to replay it)."""
    seed = random.randrange(2 ** 32)
    return random.Random(seed), seed


def check_streams_decode(expected, d, out):
    """Feed `out` to detokenizer `d`: every piece stays a prefix of the final text (nothing shown
    is ever contradicted later), and all of it is `expected`."""
    emitted = ""
    for t in out:
        emitted += d.add(t)
        assert expected.startswith(emitted), (emitted, expected)
    emitted += d.flush()
    assert emitted == expected
    assert d.flush() == ""


def test_random_prompts_and_outputs_byte_level(tok, make):
    """Prompts that end inside a character (random token ids, mostly multi-byte pieces): the
    output's first bytes must not join the prompt's unfinished character. Both detokenizers."""
    rng, seed = _fresh_rng()
    vocab = tok.get_vocab_size()
    non_ascii = [i for i in range(vocab) if any(b >= 0x80 for b in token_bytes(tok, i))]
    assert len(non_ascii) > 20
    for _ in range(2000):
        pool = non_ascii if rng.random() < 0.7 else range(vocab)
        prompt = [rng.choice(pool) for _ in range(rng.randint(1, 12))]
        out = [rng.choice(pool) for _ in range(rng.randint(1, 12))]
        skip = rng.random() < 0.8
        check_streams_decode(tok.decode(out, skip_special_tokens=skip), make(prompt, skip), out)
    print("seed", seed)


def test_random_prompts_and_outputs_byte_fallback():
    """The same with a byte-fallback tokenizer, whose decoder turns every byte of an invalid run of
    byte tokens into U+FFFD, characters already complete included: a run is final only once it
    ends. The text is decode(output) but for a leading space, kept as the output continues the
    prompt (decode strips it at the start of a text): decode after a stand-in token, less its text."""
    tok = _byte_fallback_tokenizer()
    rng, seed = _fresh_rng()
    vocab = tok.get_vocab_size()
    x = tok.token_to_id("▁x")
    byte = lambda b: 3 + b   # noqa: E731
    pieces = list(range(3 + 256, vocab))

    def spell(n):
        ids = []
        for _ in range(n):
            r = rng.random()
            if r < 0.3:
                ids += [byte(b) for b in rng.choice(["😀", "é", "中", "hi", "\ufffd"]).encode()]
            elif r < 0.55:
                ids.append(byte(rng.choice([0x80, 0xA6, 0xBF, 0xC3, 0xE4, 0xE6, 0xF0, 0xF5, 0x41])))
            elif r < 0.65:
                ids.append(rng.choice([1, 2, vocab + 3]))   # special tokens, an id past the vocabulary
            else:
                ids.append(rng.choice(pieces))
        return ids

    for _ in range(3000):
        prompt = [1] + spell(rng.randint(0, 8))
        out = spell(rng.randint(1, 10))
        skip = rng.random() < 0.8
        expected = tok.decode([x] + out, skip_special_tokens=skip)[len("x"):]
        check_streams_decode(expected, IncrementalDetokenizer(tok, prompt, skip), out)
    print("seed", seed)


def test_byte_fallback_output_bytes_do_not_join_the_prompt():
    tok = _byte_fallback_tokenizer()
    spelled = lambda text: [3 + b for b in text.encode()]   # noqa: E731
    hi, x = tok.token_to_id("▁hi"), tok.token_to_id("▁x")
    cases = [
        # the prompt ends inside a character that the output's first byte would complete
        ([1, hi] + spelled("有")[:2], spelled("有")[2:] + [x], "\ufffd x"),
        # a stray continuation byte after a prompt's emoji spelled in byte tokens
        ([1, hi] + spelled("😀"), spelled("😀")[3:], "\ufffd"),
        # ...and after one in the output: the run turns invalid as a whole, nothing was shown early
        ([1, hi], spelled("😀") + spelled("😀")[3:] + [x], "\ufffd" * 5 + " x"),
        # an unfinished character at the end of a valid run
        ([1, hi], spelled("é😀")[:-1], "\ufffd" * 5),
    ]
    for prompt, out, expected in cases:
        assert tok.decode([x] + out)[1:] == expected
        check_streams_decode(expected, IncrementalDetokenizer(tok, prompt), out)
    # a run is shown as soon as it ends; a prompt of byte tokens only still keeps the leading space
    d = IncrementalDetokenizer(tok, [1] + spelled("😀"))
    assert [d.add(t) for t in [x] + spelled("é") + [hi]] == [" x", "", "", "é hi"]


# ----- the other direction: LLMEngine.tokenize ------------------------------------------------------
def test_tokenize_gives_the_tokenizers_ids(tok, checkpoint, engine_factory):
    eng = engine_factory(checkpoint("gqa"))
    for text in TEXTS + PROMPT_TEXTS + PROMPTS + ["a", " ", "\n\n", "<|end_of_text|> x"]:
        assert eng.tokenize(text) == tok.encode(text, add_special_tokens=True).ids


def test_tokenize_lets_other_threads_run(checkpoint, engine_factory):
    """A long prompt is tokenized without the GIL: other threads (the engine loop's, other
    requests') keep running meanwhile."""
    import threading
    import time
    eng = engine_factory(checkpoint("gqa"))
    big = " ".join(TEXTS) * 1000          # ~1 MB: about a second of tokenizing
    result = []
    worker = threading.Thread(target=lambda: result.append(eng.tokenize(big)))
    ticks = [time.perf_counter()]
    worker.start()
    while worker.is_alive():
        time.sleep(0.001)
        ticks.append(time.perf_counter())
    total = ticks[-1] - ticks[0]
    gap = max(b - a for a, b in zip(ticks, ticks[1:]))
    assert result and total > 0.2, total
    assert gap < total / 2, f"this thread stood still for {gap:.3f} s of {total:.3f} s"
