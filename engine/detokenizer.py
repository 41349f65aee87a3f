"""Incremental detokenization: turn one new token at a time into new text, never half a character.

Byte-level BPE tokens can end in the middle of a UTF-8 character (an emoji is often 2-4 tokens).
Decoding such a prefix yields U+FFFD; we hold the text back until the character is complete. We
decode a short window of tokens (the last few already emitted plus the new ones) and emit what it
adds beyond the window's already-emitted part, which also keeps tokenizers that merge spaces across
tokens (SentencePiece-style) right.
"""
from __future__ import annotations

from tokenizers import Tokenizer

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 5  # already-emitted tokens decoded again for context


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self.tokens: list[int] = list(prompt_token_ids[-CONTEXT_TOKENS:])
        self.prefix_offset = 0                # window start
        self.read_offset = len(self.tokens)   # tokens before this are already emitted as text

    def add(self, token_id: int) -> str:
        """Append a token and return the text it completes (possibly empty)."""
        self.tokens.append(token_id)
        prefix = self._decode(self.tokens[self.prefix_offset:self.read_offset])
        full = self._decode(self.tokens[self.prefix_offset:])
        if len(full) <= len(prefix) or full.endswith(REPLACEMENT):
            return ""  # incomplete character (or a token that decodes to nothing): wait
        new = full[len(prefix):]
        self.prefix_offset = max(self.read_offset, len(self.tokens) - CONTEXT_TOKENS)
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
