"""Continuous batching: decide, every step, which tokens of which sequences the model computes.

Each step has a token budget (`max_num_batched_tokens`). Running sequences go first, oldest first:
a decoding sequence needs one token, a sequence still in prefill gets the next chunk of its prompt
(chunked prefill), so a long prompt never stalls the streams already running. Whatever budget is
left admits waiting sequences first-come-first-served, each starting after its prefix-cache hits.

Tokens alone do not bound a step's time: a chunk's attention grows with the context before it, and
deep into a long prompt a 256-token chunk cost 1.7x a chunk at its start (H100, 1B shape, 8k
context). So prefill chunks also share a budget of query-key pairs per step (`attention_budget`,
default max_num_batched_tokens x 2,048): a chunk of n tokens after c cached ones computes about
n * (c + n / 2) pairs, and the chunks get shorter as their context grows. Decodes are not limited.

When the KV cache runs out of blocks, the most recently admitted running sequence is preempted: its
blocks are freed (they stay in the prefix cache until evicted) and it returns to the front of the
waiting queue to be recomputed later. Nothing fails and nothing is dropped.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.sequence import Sequence, Status


# The default attention budget: as many query-key pairs as a full token budget of prompt tokens
# that each attend to this many others.
CONTEXT_PER_BUDGET_TOKEN = 2048


def chunk_pairs(context: int, n: int) -> int:
    """Query-key pairs of a causal chunk of n tokens after `context` cached ones (about)."""
    return n * context + n * (n + 1) // 2


def longest_chunk(context: int, remaining: int, pairs: int) -> int:
    """The most tokens (<= remaining) a chunk after `context` tokens may have within `pairs`."""
    lo, hi = 0, remaining
    while lo < hi:   # chunk_pairs grows with n: bisect
        mid = (lo + hi + 1) // 2
        if chunk_pairs(context, mid) <= pairs:
            lo = mid
        else:
            hi = mid - 1
    return lo


class QueueFull(RuntimeError):
    """The bounded waiting queue is full: the caller should answer UNAVAILABLE."""


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)   # tokens computed this step, per seq
    preempted: list[Sequence] = field(default_factory=list)
    _sampling: list[bool] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.seqs)

    def samples(self, i: int) -> bool:
        """Does sequence i reach its last token this step (and so sample the next one)?"""
        return self.sampling_flags()[i]

    def sampling_flags(self) -> list[bool]:
        """samples(i) for every i, computed once, on the first call: that must come before the
        step advances the sequences' num_computed_tokens (the runner's prepare does it)."""
        if self._sampling is None:
            self._sampling = [s.num_computed_tokens + n == len(s.token_ids) + s.num_pending
                              for s, n in zip(self.seqs, self.num_new_tokens)]
        return self._sampling


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_waiting: int, attention_budget: int | None = None):
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        # Query-key pairs the prefill chunks of one step may compute (0: no limit).
        self.attention_budget = (max_num_batched_tokens * CONTEXT_PER_BUDGET_TOKEN
                                 if attention_budget is None else attention_budget)
        self.max_waiting = max_waiting
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        if len(self.waiting) >= self.max_waiting:
            raise QueueFull(f"the waiting queue is full ({self.max_waiting} requests); retry later")
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _chunk(self, context: int, remaining: int, budget: int) -> int:
        """Tokens to compute for a sequence with `remaining` uncomputed tokens after `context`
        computed ones: within the token budget and, for a prefill chunk, the attention budget.
        The first chunk of a step always gets at least a block, so every prompt progresses."""
        n = min(remaining, budget)
        if n <= 1 or not self.attention_budget:
            return n
        allowed = longest_chunk(context, n, self._pairs_left)
        if allowed < n and self._pairs_left == self.attention_budget:
            allowed = max(allowed, min(n, self.bm.block_size))
        self._pairs_left = max(0, self._pairs_left - chunk_pairs(context, allowed))
        return allowed

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        self._pairs_left = self.attention_budget
        block_size = self.bm.block_size
        deferred = False   # a sequence waits for a block this step: admit nothing that takes one
        i = 0
        # Runs for every running sequence every step: a decode (one token left to compute, which
        # needs a new block once every block_size steps) takes the short path.
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_tokens = len(seq.token_ids) + seq.num_pending
            if seq.num_pending and num_tokens >= seq.max_total_tokens:
                i += 1   # its last token is in flight (asynchronous scheduling): it finishes when read
                continue
            remaining = num_tokens - seq.num_computed_tokens
            n = 1 if remaining == 1 else self._chunk(seq.num_computed_tokens, remaining, budget)
            if n == 0:   # a prefill chunk with no attention budget left this step
                i += 1
                continue
            target = seq.num_computed_tokens + n
            if len(seq.block_table) * block_size < target:
                if seq.num_pending and not self.bm.can_grow(seq, target):
                    # Its last token is in flight and may end it (EOS, a stop string): preempting
                    # another request for it now could recompute that one's context for nothing.
                    # Skip it a step; its token is read meanwhile and the next step decides.
                    deferred = True
                    i += 1
                    continue
                if not self._make_room(seq, target, batch):
                    break  # `seq` itself was preempted; everything after it already was
                self.bm.grow(seq, target)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            budget -= n
            i += 1

        # Admit new work only if nothing had to be preempted or wait for a block: otherwise we
        # would evict and re-admit in a loop.
        while (not batch.preempted and not deferred and self.waiting and budget > 0
               and len(self.running) < self.max_num_seqs):
            seq = self.waiting[0]
            cached = self.bm.find_cached_prefix(seq)
            context = len(cached) * self.bm.block_size
            n = self._chunk(context, seq.num_tokens - context, budget)
            if n == 0:
                break
            if not self.bm.can_admit(seq, cached, context + n):
                break  # FCFS: later requests do not overtake the head of the queue
            self.waiting.popleft()
            self.bm.admit(seq, cached)
            seq.num_cached_prompt_tokens = seq.num_computed_tokens
            self.bm.grow(seq, seq.num_computed_tokens + n)
            seq.status = Status.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            budget -= n
        return batch

    def _make_room(self, seq: Sequence, num_tokens: int, batch: ScheduledBatch) -> bool:
        """Preempt from the back of the running list until `seq` can grow to `num_tokens`.
        Returns False if `seq` itself had to go."""
        while not self.bm.can_grow(seq, num_tokens):
            victim = self.running.pop()
            self._preempt(victim)
            batch.preempted.append(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.bm.free_sequence(seq)
        seq.status = Status.WAITING
        seq.preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence wherever it is and release its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.bm.free_sequence(seq)
        seq.status = Status.FINISHED
