"""Incremental detokenization: turn one new token at a time into new text, never half a character.

Byte-level BPE tokens can end in the middle of a UTF-8 character (an emoji is often 2-4 tokens).
Decoding such a prefix yields U+FFFD; we hold the text back until the character is complete. We
decode a short window of tokens (the last few already emitted plus the new ones) and emit what it
adds beyond the window's already-emitted part, which also keeps tokenizers that merge spaces across
tokens (SentencePiece-style) right.

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

_continuation_ids: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def continuation_byte_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """The ids of a byte-fallback tokenizer's tokens for UTF-8 continuation bytes (SentencePiece's
    "<0x80>" ... "<0xBF>", as in Llama 2 and Mistral); empty for other tokenizers."""
    ids = _continuation_ids.get(tokenizer)
    if ids is None:
        found = (tokenizer.token_to_id(f"<0x{b:02X}>") for b in range(0x80, 0xC0))
        ids = _continuation_ids[tokenizer] = frozenset(i for i in found if i is not None)
    return ids


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self._continuation = continuation_byte_ids(tokenizer)
        self.tokens: list[int] = list(prompt_token_ids[-(CONTEXT_TOKENS + MAX_CONTINUATION_BYTES):])
        self.prefix_offset = self._at_character_start(max(0, len(self.tokens) - CONTEXT_TOKENS))   # window start
        self.read_offset = len(self.tokens)   # tokens before this are already emitted as text

    def add(self, token_id: int) -> str:
        """Append a token and return the text it completes (possibly empty)."""
        self.tokens.append(token_id)
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

    def flush(self) -> str:
        """At the end of generation: whatever is held back, replacement characters included."""
        if self.read_offset >= len(self.tokens):
            return ""
        prefix = self._decode(self.tokens[self.prefix_offset:self.read_offset])
        full = self._decode(self.tokens[self.prefix_offset:])
        self.read_offset = len(self.tokens)
        return full[len(prefix):] if len(full) > len(prefix) else ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special)

    def _at_character_start(self, offset: int) -> int:
        """`offset` moved back off the continuation bytes of a byte-fallback character. A window
        that began inside one decoded its bytes as an invalid run, and the ByteFallback decoder
        turns every byte of an invalid run into U+FFFD: the bytes generated next, joining that
        run, came out as U+FFFD too (a prompt ending in an emoji spelled in byte tokens)."""
        low = max(0, offset - MAX_CONTINUATION_BYTES)
        while offset > low and self.tokens[offset] in self._continuation:
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

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


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
