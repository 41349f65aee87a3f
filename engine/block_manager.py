"""The paged KV cache's bookkeeping: which fixed-size block holds which sequence's tokens.

Each sequence owns a block table (list of block ids); token t of the sequence lives in block
`table[t // block_size]` at offset `t % block_size`. Blocks are reference counted so sequences with
the same prompt prefix can share them (prefix caching): a *full* block is identified by a digest of
its tokens chained with its predecessor's digest, so equal digests mean equal whole prefixes. A block whose
count drops to zero goes to the back of the free queue but keeps its contents and hash: a later
request with the same prefix can take it back, and only when a fresh block is needed is the
least-recently freed one evicted (its hash forgotten).

Accounting invariant (checked by tests): num_free_blocks + blocks referenced by some sequence ==
num_blocks, at all times.
"""
from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict

from engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        # Free blocks in eviction order (least recently freed first). OrderedDict: O(1) removal of a
        # cached block from the middle when a prefix hit takes it back.
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._pack_tokens = struct.Struct(f"<{block_size}q").pack
        self.block_hash: dict[int, bytes] = {}        # block id -> digest of its whole prefix
        self.block_tokens: dict[int, tuple] = {}      # block id -> its tokens (checked at every hit too)
        self.cached: dict[bytes, int] = {}            # digest -> block id
        self.seq_hashes: dict[str, list[bytes]] = {}  # request id -> digests of its full blocks
        # Statistics for metrics/tests.
        self.prefix_queries = 0
        self.prefix_hits = 0

    # ----- queries -------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ----- prefix cache --------------------------------------------------------------------------
    def _block_hash(self, parent: bytes, tokens: tuple) -> bytes:
        """A full block's identity: a 128-bit BLAKE2b digest of its predecessor's digest (empty for
        the first block) and its tokens. Not Python's hash(): ints hash modulo 2^61 - 1 and tuples
        by a public, invertible mix, so prompts could be crafted whose chains collide with another
        request's, and be served its KV cache (reading another user's prompt, or poisoning it: the
        kind of hole vLLM fixed by moving to SHA-256, CVE-2025-25183). Comparing a block's own
        tokens at a hit cannot catch that: the prefixes before it differ. ~0.8 us a block."""
        return hashlib.blake2b(parent + self._pack_tokens(*tokens), digest_size=16).digest()

    def _chain_hashes(self, token_ids: list[int], num_full_blocks: int, start_hashes: list[bytes]) -> list[bytes]:
        hashes = list(start_hashes)
        bs = self.block_size
        for i in range(len(hashes), num_full_blocks):
            parent = hashes[-1] if hashes else b""
            hashes.append(self._block_hash(parent, tuple(token_ids[i * bs:(i + 1) * bs])))
        return hashes

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached prefix of the sequence's tokens, leaving at least one
        token to compute (its logits give the next token). Hashes block by block, stopping at
        the first miss (on the hot path of every admission), instead of chaining them all first."""
        if not self.prefix_caching:
            return []
        bs, ids, cached, block_tokens = self.block_size, seq.token_ids, self.cached, self.block_tokens
        hits, parent = [], b""
        for start in range(0, (seq.num_tokens - 1) // bs * bs, bs):
            tokens = tuple(ids[start:start + bs])
            parent = self._block_hash(parent, tokens)
            block = cached.get(parent)
            if block is None or block_tokens[block] != tokens:
                break
            hits.append(block)
        return hits

    def can_admit(self, seq: Sequence, cached: list[int], num_tokens: int) -> bool:
        """Enough blocks for the sequence's first `num_tokens` tokens, given the prefix hits?"""
        # A hit on a block with no references takes it out of the free queue, so it counts too.
        from_free = sum(1 for b in cached if self.ref_counts[b] == 0)
        new = self.blocks_needed(num_tokens) - len(cached)
        return from_free + new <= len(self.free)

    def admit(self, seq: Sequence, cached: list[int]) -> None:
        """Give a waiting sequence its prefix hits; the caller then grows it with `ensure`."""
        assert not seq.block_table
        for b in cached:
            if self.ref_counts[b] == 0:
                del self.free[b]
            self.ref_counts[b] += 1
        seq.block_table = list(cached)
        seq.num_computed_tokens = len(cached) * self.block_size
        if self.prefix_caching:
            self.seq_hashes[seq.request_id] = [self.block_hash[b] for b in cached]
            self.prefix_queries += seq.num_tokens
            self.prefix_hits += seq.num_computed_tokens

    # ----- allocation ----------------------------------------------------------------------------
    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(num_tokens) - len(seq.block_table) <= len(self.free)

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Make the block table cover `num_tokens` tokens. Call `can_grow` first."""
        for _ in range(self.blocks_needed(num_tokens) - len(seq.block_table)):
            seq.block_table.append(self._take_free_block())

    def _take_free_block(self) -> int:
        block, _ = self.free.popitem(last=False)   # least recently freed
        old = self.block_hash.pop(block, None)
        if old is not None:                          # evict its cached contents
            self.block_tokens.pop(block)
            if self.cached.get(old) == block:
                del self.cached[old]
        self.ref_counts[block] = 1
        return block

    def commit(self, seq: Sequence) -> None:
        """Register the sequence's newly completed (full and computed) blocks in the prefix cache."""
        if not self.prefix_caching:
            return
        hashes = self.seq_hashes.setdefault(seq.request_id, [])
        num_full = seq.num_computed_tokens // self.block_size
        if num_full <= len(hashes):
            return
        first_new = len(hashes)
        hashes[:] = self._chain_hashes(seq.token_ids, num_full, hashes)
        bs = self.block_size
        for i in range(first_new, num_full):
            block, h = seq.block_table[i], hashes[i]
            if h in self.cached or block in self.block_hash:
                continue  # an identical block is already cached; ours stays private
            self.cached[h] = block
            self.block_hash[block] = h
            self.block_tokens[block] = tuple(seq.token_ids[i * bs:(i + 1) * bs])

    def free_sequence(self, seq: Sequence) -> None:
        """Drop the sequence's references. Its tail blocks are freed first so they are evicted
        before its (more shareable) head blocks."""
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            assert self.ref_counts[block] >= 0, f"block {block} freed twice"
            if self.ref_counts[block] == 0:
                self.free[block] = None
        seq.block_table = []
        seq.num_computed_tokens = 0
        self.seq_hashes.pop(seq.request_id, None)

    def reset_prefix_cache(self) -> None:
        self.cached.clear()
        self.block_hash.clear()
        self.block_tokens.clear()
