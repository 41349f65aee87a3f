"""Incremental detokenization: turn one new token at a time into new text, never half a character.

Byte-level BPE tokens can end in the middle of a UTF-8 character (an emoji is often 2-4 tokens).
Decoding such a prefix yields U+FFFD; we hold the text back until the character is complete. We
decode a short window of tokens (the last few already emitted plus the new ones) and emit what it
adds beyond the window's already-emitted part, which also keeps tokenizers that merge spaces across
tokens (SentencePiece-style) right. The output's text is `tokenizer.decode(output ids)` (but for a
leading space, see IncrementalDetokenizer): the window's prompt part ends where the output's bytes
cannot join it (`_prompt_context`), and with a byte-fallback tokenizer (SentencePiece "<0xNN>"
tokens) a run of byte tokens is held back until it ends, since a later byte can still turn all of
it into U+FFFD (the ByteFallback decoder's rule for an invalid run), and text once shown cannot be
taken back. The cost: characters spelled in byte tokens show one token late, a run of them (rare
CJK characters, emoji in a row) only once it ends.

Ending a request early (a stop token left out of the text, an abort) drops an unfinished character
instead of showing it as U+FFFD (`flush(drop_incomplete=True)`, `continues`).

Byte-level BPE tokenizers (GPT-2, the Llama 3 family) decode by concatenating each token's bytes,
so for them `ByteLevelDetokenizer` skips the tokenizer altogether: it looks up each token's bytes
once (`ByteLevelTokens`, shared by all requests) and feeds them to Python's incremental UTF-8
decoder, which emits every complete character and holds back a partial one. That is the same text
as `tokenizer.decode` (which replaces invalid bytes the same way) at a small fraction of the cost
of the two tokenizer calls per token above: at batch 128 those were ~15% of the engine thread's
time on the H100 machines (perf/results/2026-11-24-h100/serving_cpu/).
"""
from __future__ import annotations

import codecs
import weakref

from tokenizers import Tokenizer, decoders

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 5  # already-emitted tokens decoded again for context
MAX_CONTINUATION_BYTES = 3   # a UTF-8 character is at most 4 bytes
PROMPT_SEARCH_TOKENS = 64    # how far back the prompt is searched for the window's first end


class _TokenView:
    """What the general detokenizer needs to know about a tokenizer's tokens, shared by all its
    requests: which tokens may stand for part of a character, and their bytes.

    - Byte-fallback tokenizers (SentencePiece style: Llama 2, Mistral): the "<0xNN>" tokens, one
      byte each, when the decoder has a ByteFallback step. That step decodes each run of
      consecutive byte tokens as a whole: valid UTF-8 gives its text, anything else one U+FFFD per
      byte of the run, already complete characters included.
    - Byte-level tokenizers (a ByteLevel decoder): every token's bytes (ByteLevelTokens); their
      text is the bytes decoded with U+FFFD for each maximal invalid subpart, as Python's decoder.
    - Other tokenizers: every token is whole characters."""

    def __init__(self, tokenizer: Tokenizer):
        self.byte_level = ByteLevelTokens(tokenizer) if ByteLevelTokens.supports(tokenizer) else None
        self.fallback_byte: dict[int, int] = {}
        if tokenizer.decoder is not None and b'"ByteFallback"' in tokenizer.decoder.__getstate__():
            for b in range(256):
                i = tokenizer.token_to_id(f"<0x{b:02X}>")
                if i is not None:
                    self.fallback_byte[i] = b
        self.continuation = frozenset(i for i, b in self.fallback_byte.items() if 0x80 <= b < 0xC0)
        self.special = frozenset(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)
        self.vocab_size = tokenizer.get_vocab_size()
        # A token with text of its own, to start the window with when the prompt's last tokens are
        # all byte tokens (IncrementalDetokenizer._prompt_context).
        self.anchor = None
        if self.fallback_byte:
            for text in ("a", "x", "0", "."):
                ids = tokenizer.encode(text, add_special_tokens=False).ids
                if ids and ids[-1] not in self.fallback_byte and ids[-1] not in self.special \
                        and tokenizer.decode(ids[-1:], skip_special_tokens=True):
                    self.anchor = ids[-1]
                    break

    def decodes_to_nothing(self, token_id: int, skip_special: bool) -> bool:
        """Skipped special tokens and ids outside the vocabulary (tokenizer.decode drops them)."""
        return (skip_special and token_id in self.special) or not 0 <= token_id < self.vocab_size


_views: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _token_view(tokenizer: Tokenizer) -> _TokenView:
    view = _views.get(tokenizer)
    if view is None:
        view = _views[tokenizer] = _TokenView(tokenizer)
    return view


def _pending(data: bytes) -> int:
    """How many bytes at the end of `data` are the start of a character still incomplete (0 when
    `data` ends on a character boundary), as Python's incremental UTF-8 decoder holds them."""
    return len(data) - codecs.utf_8_decode(data, "replace", False)[1]


def _continues(pending: bytes, data: bytes) -> bool:
    """Whether `data`'s first byte carries on the incomplete character `pending` begins."""
    if not pending or not data:
        return False
    try:
        codecs.utf_8_decode(pending + data[:1], "strict", False)
    except UnicodeDecodeError:
        return False
    return True


class IncrementalDetokenizer:
    """The general detokenizer: a window of tokens through `tokenizer.decode` (module docstring).

    Its text is exactly `tokenizer.decode(output ids)`, but for the start of the output: a leading
    space that a SentencePiece decoder strips at the start of a text is kept, since the output
    continues the prompt (the window begins with the prompt's last tokens, as vLLM's does)."""

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self._view = _token_view(tokenizer)
        self._fallback = self._view.fallback_byte
        self.tokens: list[int] = self._prompt_context(prompt_token_ids)
        self.prefix_offset = self._at_character_start(max(0, len(self.tokens) - CONTEXT_TOKENS))   # window start
        self.read_offset = len(self.tokens)   # tokens before this are already emitted as text

    def _prompt_context(self, prompt: list[int]) -> list[int]:
        """The prompt's last tokens that the window starts with, ending where the output's bytes
        cannot join the prompt's: on a character boundary (a prompt ending inside a character
        would take the output's first bytes into that character, and they would not show in the
        output's text), and for a byte-fallback tokenizer past the last byte token (the output's
        byte tokens would extend the prompt's run, and an invalid run turns all its bytes into
        U+FFFD). If the prompt's last PROMPT_SEARCH_TOKENS tokens are all byte tokens, the window
        starts with a stand-in token with text, so that the output is not taken for the start of a
        text (a SentencePiece decoder strips a leading space there)."""
        tail = list(prompt[-PROMPT_SEARCH_TOKENS:])
        end = len(tail)
        view = self._view
        if self._fallback:
            while end and (tail[end - 1] in self._fallback
                           or view.decodes_to_nothing(tail[end - 1], self.skip_special)):
                end -= 1
            if not end and view.anchor is not None:
                return [view.anchor]
        elif view.byte_level is not None:
            data = lambda ids: b"".join(view.byte_level.get(t, self.skip_special) for t in ids)  # noqa: E731
            while end and _pending(data(tail[max(0, end - CONTEXT_TOKENS):end])):
                end -= 1
        return tail[max(0, end - CONTEXT_TOKENS - MAX_CONTINUATION_BYTES):end]

    def add(self, token_id: int) -> str:
        """Append a token and return the text it completes (possibly empty)."""
        self.tokens.append(token_id)
        if self._fallback and (token_id in self._fallback
                               or self._view.decodes_to_nothing(token_id, self.skip_special)):
            # A byte token: its run's text is final only once the run ends (a token with text,
            # or flush); until then a later byte could still make the whole run invalid. A token
            # without text (a skipped special token) does not end a run: decode drops it first.
            return ""
        prefix = self._decode(self.tokens[self.prefix_offset:self.read_offset])
        full = self._decode(self.tokens[self.prefix_offset:])
        if len(full) <= len(prefix) or full.endswith(REPLACEMENT):
            return ""  # incomplete character (or a token that decodes to nothing): wait
        new = full[len(prefix):]
        self.prefix_offset = self._at_character_start(max(self.read_offset, len(self.tokens) - CONTEXT_TOKENS))
        self.read_offset = len(self.tokens)
        # Drop what we no longer need, so a long generation costs O(1) per token.
        if self.prefix_offset > 64:
            del self.tokens[:self.prefix_offset]
            self.read_offset -= self.prefix_offset
            self.prefix_offset = 0
        return new

    def flush(self, drop_incomplete: bool = False) -> str:
        """At the end of generation: whatever is held back, an unfinished character as U+FFFD
        (as tokenizer.decode gives it), or without that character if `drop_incomplete`."""
        if self.read_offset >= len(self.tokens):
            return ""
        held = self.tokens[self.read_offset:]
        n = self._incomplete_bytes(held) if drop_incomplete else 0
        if n and self._fallback:
            # the incomplete character's byte tokens are the last n byte tokens held
            keep = [True] * len(held)
            for k in range(len(held) - 1, -1, -1):
                if n and held[k] in self._fallback:
                    keep[k], n = False, n - 1
            held = [t for t, kept in zip(held, keep) if kept]
        prefix = self._decode(self.tokens[self.prefix_offset:self.read_offset])
        full = self._decode(self.tokens[self.prefix_offset:self.read_offset] + held)
        self.read_offset = len(self.tokens)
        text = full[len(prefix):] if len(full) > len(prefix) else ""
        if n and text.endswith(REPLACEMENT):   # byte-level: the incomplete character is one U+FFFD
            text = text[:-1]
        return text

    def continues(self, token_id: int) -> bool:
        """Whether `token_id`'s bytes would carry on an incomplete character held back now."""
        held = self.tokens[self.read_offset:]
        view = self._view
        if self._fallback:
            data = bytes([self._fallback[token_id]]) if token_id in self._fallback else b""
        elif view.byte_level is not None:
            data = view.byte_level.get(token_id, self.skip_special)
        else:
            return False
        n = self._incomplete_bytes(held)
        return bool(n) and _continues(self._bytes(held)[-n:], data)

    def _bytes(self, ids: list[int]) -> bytes:
        """The bytes of the byte tokens in `ids` after the last token with text of its own."""
        view = self._view
        if view.byte_level is not None:
            return b"".join(view.byte_level.get(t, self.skip_special) for t in ids)
        run = bytearray()
        for t in ids:
            if t in self._fallback:
                run.append(self._fallback[t])
            elif not view.decodes_to_nothing(t, self.skip_special):
                run.clear()
        return bytes(run)

    def _incomplete_bytes(self, ids: list[int]) -> int:
        if not self._fallback and self._view.byte_level is None:
            return 0
        return _pending(self._bytes(ids))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special)

    def _at_character_start(self, offset: int) -> int:
        """`offset` moved back off the continuation bytes of a byte-fallback character, so that a
        window does not begin inside one (its bytes would decode as an invalid run)."""
        low = max(0, offset - MAX_CONTINUATION_BYTES)
        while offset > low and self.tokens[offset] in self._view.continuation:
            offset -= 1
        return offset


class ByteLevelTokens:
    """The raw bytes of each token of a byte-level BPE tokenizer, as its ByteLevel decoder turns
    them into text: each character of the token's string maps back to one byte (GPT-2's
    byte-to-unicode table), unless one of them is outside the table (the literal text of an added
    token), and then the whole string stands for its UTF-8 bytes. Special tokens are b"" when
    skipped; ids outside the vocabulary decode to nothing, as in `tokenizer.decode`."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        self._bytes: dict[int, bytes] = {}

    @staticmethod
    def supports(tokenizer: Tokenizer) -> bool:
        """True for a tokenizer whose decoder is exactly ByteLevel (nothing chained to it)."""
        return isinstance(tokenizer.decoder, decoders.ByteLevel)

    def get(self, token_id: int, skip_special: bool) -> bytes:
        if skip_special and token_id in self.special:
            return b""
        data = self._bytes.get(token_id)
        if data is None:
            piece = self.tokenizer.id_to_token(token_id)
            if piece is None:
                data = b""
            else:
                try:
                    data = bytes(BYTE_OF_CHAR[c] for c in piece)
                except KeyError:
                    data = piece.encode("utf-8")
            self._bytes[token_id] = data
        return data


class ByteLevelDetokenizer:
    """IncrementalDetokenizer's interface for byte-level tokenizers (see the module docstring)."""

    def __init__(self, tokens: ByteLevelTokens, skip_special_tokens: bool = True):
        self.tokens = tokens
        self.skip_special = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def add(self, token_id: int) -> str:
        return self._utf8.decode(self.tokens.get(token_id, self.skip_special))

    def flush(self, drop_incomplete: bool = False) -> str:
        """At the end of generation: an unfinished character as U+FFFD, or nothing if `drop_incomplete`."""
        if drop_incomplete:
            self._utf8.reset()
            return ""
        return self._utf8.decode(b"", final=True)

    def continues(self, token_id: int) -> bool:
        """Whether `token_id`'s bytes would carry on the incomplete character held back now."""
        return _continues(self._utf8.getstate()[0], self.tokens.get(token_id, self.skip_special))


def make_detokenizer(tokenizer: Tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool,
                     byte_tokens: ByteLevelTokens | None):
    """The fast detokenizer when the tokenizer is byte-level (`byte_tokens` given), else the general one."""
    if byte_tokens is not None:
        return ByteLevelDetokenizer(byte_tokens, skip_special_tokens)
    return IncrementalDetokenizer(tokenizer, prompt_token_ids, skip_special_tokens)


def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte <-> unicode table, reversed: printable bytes stand for themselves, the others
    for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in table.values():
            table[chr(256 + extra)] = b
            extra += 1
    return table


BYTE_OF_CHAR = _byte_of_char()
