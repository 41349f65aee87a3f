"""BlockManager: allocation, exact accounting, prefix-cache hash chains, sharing and LRU eviction."""
from __future__ import annotations

import random

import pytest

from engine.block_manager import BlockManager
from engine_testing import fake_seq

BS = 4


def books(bm: BlockManager, live) -> None:
    """num_free + referenced == total, and reference counts equal the live block tables'."""
    refs = {}
    for s in live:
        for b in s.block_table:
            refs[b] = refs.get(b, 0) + 1
    referenced = [b for b in range(bm.num_blocks) if bm.ref_counts[b] > 0]
    assert bm.num_free_blocks + len(referenced) == bm.num_blocks
    assert bm.num_used_blocks == len(referenced)
    assert set(bm.free) == set(range(bm.num_blocks)) - set(referenced)
    assert all(bm.ref_counts[b] == refs.get(b, 0) for b in range(bm.num_blocks))
    assert all(c >= 0 for c in bm.ref_counts)


def start(bm: BlockManager, seq, compute: int | None = None):
    """Admit `seq` with its prefix hits, allocate and "compute" `compute` tokens (default: all)."""
    cached = bm.find_cached_prefix(seq)
    n = seq.num_tokens if compute is None else compute
    assert bm.can_admit(seq, cached, n)
    bm.admit(seq, cached)
    bm.grow(seq, n)
    seq.num_computed_tokens = n
    bm.commit(seq)
    return cached


def toks(*blocks):
    """Token list made of whole blocks; each argument is a block's fill value or a list."""
    out = []
    for b in blocks:
        out.extend(b if isinstance(b, list) else [b] * BS)
    return out


# ----- allocation and free ------------------------------------------------------------------------
def test_allocate_and_free_exact_counts():
    bm = BlockManager(10, BS)
    a = fake_seq(range(9), request_id="a")                 # 9 tokens -> 3 blocks
    assert bm.blocks_needed(9) == 3 and bm.blocks_needed(8) == 2 and bm.blocks_needed(0) == 0
    bm.admit(a, [])
    assert a.block_table == [] and a.num_computed_tokens == 0
    assert bm.can_grow(a, 9)
    bm.grow(a, 9)
    assert len(a.block_table) == 3 and len(set(a.block_table)) == 3
    assert bm.num_free_blocks == 7 and bm.num_used_blocks == 3
    books(bm, [a])
    bm.grow(a, 12)                                         # still 3 blocks: nothing taken
    assert len(a.block_table) == 3 and bm.num_free_blocks == 7
    bm.grow(a, 13)
    assert len(a.block_table) == 4 and bm.num_free_blocks == 6
    books(bm, [a])
    bm.free_sequence(a)
    assert a.block_table == [] and a.num_computed_tokens == 0
    assert bm.num_free_blocks == 10 and bm.num_used_blocks == 0
    books(bm, [])


def test_can_grow_and_can_admit_respect_capacity():
    bm = BlockManager(5, BS)
    a = fake_seq(range(12), request_id="a")
    bm.admit(a, [])
    bm.grow(a, 12)                                         # 3 blocks, 2 free
    b = fake_seq(range(100, 112), request_id="b")
    assert bm.can_admit(b, [], 8) and not bm.can_admit(b, [], 9)
    assert bm.can_grow(a, 20) and not bm.can_grow(a, 21)
    books(bm, [a])


def test_freeing_twice_is_caught():
    bm = BlockManager(4, BS)
    a = fake_seq(range(5), request_id="a")
    bm.admit(a, [])
    bm.grow(a, 5)
    table = list(a.block_table)
    bm.free_sequence(a)
    a.block_table = table                                  # a stale table freed again
    with pytest.raises(AssertionError):
        bm.free_sequence(a)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("prefix_caching", [True, False])
def test_random_operations_keep_exact_accounting(seed, prefix_caching):
    """Random admissions (with shared prefixes), growth, commits and frees: the books balance after
    every operation, no block is ever held twice by one sequence, and no live block is handed out."""
    rng = random.Random(seed)
    bm = BlockManager(24, BS, enable_prefix_caching=prefix_caching)
    prefixes = [[rng.randrange(50) for _ in range(rng.randrange(1, 14))] for _ in range(4)]
    live = []
    for step in range(400):
        op = rng.random()
        if op < 0.4 and len(live) < 8:
            tokens = rng.choice(prefixes) + [rng.randrange(50) for _ in range(rng.randrange(0, 10))]
            seq = fake_seq(tokens, request_id=f"s{step}")
            cached = bm.find_cached_prefix(seq)
            assert len(cached) * BS < seq.num_tokens
            n = min(seq.num_tokens, len(cached) * BS + rng.randrange(1, 9))
            if bm.can_admit(seq, cached, n):
                held = {b for s in live for b in s.block_table}
                free_before = bm.num_free_blocks
                bm.admit(seq, cached)
                bm.grow(seq, n)
                new_blocks = seq.block_table[len(cached):]
                assert not held & set(new_blocks), "a block in use was handed out again"
                taken = len(new_blocks) + sum(1 for b in cached if b not in held)
                assert bm.num_free_blocks == free_before - taken
                seq.num_computed_tokens = n
                bm.commit(seq)
                live.append(seq)
        elif op < 0.75 and live:
            seq = rng.choice(live)
            # extend: more prompt to compute, or a generated token
            if seq.num_computed_tokens == seq.num_tokens:
                seq.token_ids.append(rng.randrange(50))
            n = min(seq.num_tokens, seq.num_computed_tokens + rng.randrange(1, 6))
            if bm.can_grow(seq, n):
                held = {b for s in live if s is not seq for b in s.block_table}
                before = list(seq.block_table)
                bm.grow(seq, n)
                assert seq.block_table[:len(before)] == before
                assert not held & set(seq.block_table[len(before):])
                seq.num_computed_tokens = n
                bm.commit(seq)
        elif live:
            seq = live.pop(rng.randrange(len(live)))
            bm.free_sequence(seq)
        books(bm, live)
        for s in live:
            assert len(s.block_table) == bm.blocks_needed(s.num_computed_tokens)
    for s in live:
        bm.free_sequence(s)
    books(bm, [])
    assert bm.num_free_blocks == bm.num_blocks


# ----- hash chains and prefix hits ----------------------------------------------------------------
def test_same_prefix_same_blocks():
    bm = BlockManager(16, BS)
    a = fake_seq(toks(1, 2, 3) + [9], request_id="a")
    start(bm, a)
    b = fake_seq(toks(1, 2, 3) + [8, 8], request_id="b")
    cached = bm.find_cached_prefix(b)
    assert cached == a.block_table[:3]
    assert bm.seq_hashes["a"][:3] == bm._chain_hashes(b.token_ids, 3, [])
    # a shorter shared prefix hits only the blocks that match
    c = fake_seq(toks(1, 2, 7, 3) + [1], request_id="c")
    assert bm.find_cached_prefix(c) == a.block_table[:2]
    bm.free_sequence(a)


def test_block_identity_is_a_digest_of_the_whole_prefix_not_pythons_hash():
    """Python's hash() of (parent, tokens) confuses parents that differ by 2**61 - 1 (ints hash
    modulo that prime), so two different prefixes could name the same cached block, and the
    block's own tokens, compared at a hit, are equal by construction there. Digests do not."""
    bm = BlockManager(16, BS)
    block = tuple(range(BS))
    p = 2**61 + 12345
    assert hash((p, block)) == hash((p + 2**61 - 1, block))          # the old identity's weakness
    a, b = (bm._block_hash(x.to_bytes(16, "little"), block) for x in (p, p + 2**61 - 1))
    assert a != b and len(a) == 16
    # chained: a change anywhere before a block changes its identity
    base = toks(1, 2, 3)
    hashes = bm._chain_hashes(base, 3, [])
    for i in range(len(base)):
        changed = base[:i] + [base[i] + 1] + base[i + 1:]
        other = bm._chain_hashes(changed, 3, [])
        assert all(other[j] != hashes[j] for j in range(i // BS, 3))
        assert other[:i // BS] == hashes[:i // BS]


def test_same_block_tokens_after_different_block_hash_differently():
    bm = BlockManager(16, BS)
    a = fake_seq(toks(1, 2) + [0], request_id="a")
    start(bm, a)
    b = fake_seq(toks(5, 2) + [0], request_id="b")          # block 1 equal, block 0 different
    assert bm.find_cached_prefix(b) == []
    start(bm, b)
    ha, hb = bm.seq_hashes["a"], bm.seq_hashes["b"]
    assert len(ha) == len(hb) == 2
    assert ha[0] != hb[0] and ha[1] != hb[1]
    # both second blocks are cached separately and neither is reused for the other
    assert set(a.block_table).isdisjoint(b.block_table)
    assert bm.block_hash[a.block_table[1]] == ha[1] and bm.block_hash[b.block_table[1]] == hb[1]
    # a third sequence whose first block matches b's gets b's blocks, not a's
    c = fake_seq(toks(5, 2, 2) + [1], request_id="c")
    assert bm.find_cached_prefix(c) == b.block_table[:2]
    bm.free_sequence(a)
    bm.free_sequence(b)


def test_prefix_hit_leaves_at_least_one_token_to_compute():
    bm = BlockManager(16, BS)
    a = fake_seq(toks(1, 2, 3), request_id="a")
    start(bm, a)
    assert len(bm.seq_hashes["a"]) == 3
    same = fake_seq(toks(1, 2, 3), request_id="same")       # identical prompt, whole blocks
    hits = bm.find_cached_prefix(same)
    assert hits == a.block_table[:2]                        # the last block is computed again
    bm.admit(same, hits)
    assert same.num_computed_tokens == 2 * BS < same.num_tokens
    longer = fake_seq(toks(1, 2, 3) + [4], request_id="longer")
    assert bm.find_cached_prefix(longer) == a.block_table[:3]
    one = fake_seq([1], request_id="one")
    assert bm.find_cached_prefix(one) == []
    exact = fake_seq(toks(1), request_id="exact")
    assert bm.find_cached_prefix(exact) == []
    for s in (a, same):
        bm.free_sequence(s)
    books(bm, [])


def test_partial_and_uncomputed_blocks_are_not_cached():
    bm = BlockManager(16, BS)
    a = fake_seq(toks(1, 2, 3) + [4, 4], request_id="a")
    start(bm, a, compute=6)                                  # 1.5 blocks computed
    assert len(bm.seq_hashes["a"]) == 1
    b = fake_seq(toks(1, 2, 3) + [4, 4], request_id="b")
    assert bm.find_cached_prefix(b) == a.block_table[:1]
    bm.grow(a, 14)
    a.num_computed_tokens = 14
    bm.commit(a)
    assert len(bm.seq_hashes["a"]) == 3
    assert bm.find_cached_prefix(b) == a.block_table[:3]
    bm.free_sequence(a)


def test_ref_counts_with_shared_prefix():
    bm = BlockManager(12, BS)
    a = fake_seq(toks(1, 2) + [3], request_id="a")
    start(bm, a)
    b = fake_seq(toks(1, 2) + [4, 4], request_id="b")
    cached = start(bm, b)
    assert cached == a.block_table[:2]
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] != a.block_table[2]
    assert [bm.ref_counts[x] for x in a.block_table] == [2, 2, 1]
    assert bm.num_used_blocks == 4
    books(bm, [a, b])
    shared = a.block_table[:2]
    bm.free_sequence(a)
    assert [bm.ref_counts[x] for x in shared] == [1, 1]
    assert not set(shared) & set(bm.free), "a block still used by b was freed"
    books(bm, [b])
    # Exhaust the free list: none of b's blocks may be handed out.
    c = fake_seq(list(range(100, 100 + BS * bm.num_free_blocks)), request_id="c")
    bm.admit(c, [])
    bm.grow(c, c.num_tokens)
    assert bm.num_free_blocks == 0
    assert set(c.block_table).isdisjoint(b.block_table)
    assert not bm.can_grow(c, c.num_tokens + 1)
    books(bm, [b, c])
    bm.free_sequence(b)
    bm.free_sequence(c)
    books(bm, [])


def test_can_admit_counts_cached_blocks_taken_from_the_free_list():
    bm = BlockManager(4, BS)
    a = fake_seq(toks(1, 2, 3) + [9], request_id="a")        # uses all 4 blocks
    start(bm, a)
    bm.free_sequence(a)                                       # all free, 3 of them cached
    b = fake_seq(toks(1, 2, 3) + [7, 7, 7, 7, 7], request_id="b")
    cached = bm.find_cached_prefix(b)
    assert len(cached) == 3
    # 3 cached (free) blocks + 2 new ones = 5 > 4
    assert not bm.can_admit(b, cached, b.num_tokens)
    assert bm.can_admit(b, cached, 4 * BS)
    bm.admit(b, cached)
    assert bm.num_free_blocks == 1 and [bm.ref_counts[x] for x in cached] == [1, 1, 1]
    bm.grow(b, 4 * BS)
    assert bm.num_free_blocks == 0
    books(bm, [b])
    bm.free_sequence(b)


# ----- eviction -------------------------------------------------------------------------------------
def test_lru_eviction_order_least_recently_freed_first_tail_before_head():
    bm = BlockManager(10, BS)
    a = fake_seq(toks(1, 2, 3), request_id="a")
    b = fake_seq(toks(4, 5, 6), request_id="b")
    start(bm, a)
    start(bm, b)
    a_table, b_table = list(a.block_table), list(b.block_table)
    never_used = [x for x in range(10) if x not in a_table + b_table]
    bm.free_sequence(a)                                       # a freed before b
    bm.free_sequence(b)
    expected = never_used + a_table[::-1] + b_table[::-1]
    assert list(bm.free) == expected

    # Take blocks one at a time and watch which cached prefixes disappear.
    taker = fake_seq(list(range(1000, 1000 + 10 * BS)), request_id="taker")
    bm.admit(taker, [])
    probe_a = fake_seq(toks(1, 2, 3) + [0], request_id="pa")
    probe_b = fake_seq(toks(4, 5, 6) + [0], request_id="pb")
    got = []
    for n in range(1, 11):
        bm.grow(taker, n * BS)
        got.append(taker.block_table[-1])
        hits_a, hits_b = len(bm.find_cached_prefix(probe_a)), len(bm.find_cached_prefix(probe_b))
        taken_a = sum(1 for x in got if x in a_table)
        taken_b = sum(1 for x in got if x in b_table)
        # Tail blocks go first, so the head of each prefix stays usable as long as possible.
        assert hits_a == 3 - taken_a
        assert hits_b == 3 - taken_b
        if taken_b:
            assert taken_a == 3, "b was freed later than a: none of b's blocks before all of a's"
    assert got == expected
    bm.free_sequence(taker)
    books(bm, [])


def test_prefix_hit_refreshes_lru_position():
    bm = BlockManager(6, BS)
    a = fake_seq(toks(1, 2) + [0], request_id="a")
    b = fake_seq(toks(3, 4) + [0], request_id="b")
    start(bm, a)
    start(bm, b)
    bm.free_sequence(a)
    bm.free_sequence(b)
    # a's prefix is used again (and freed again): now b's blocks are the least recently freed.
    a2 = fake_seq(toks(1, 2) + [5], request_id="a2")
    assert len(start(bm, a2)) == 2
    bm.free_sequence(a2)
    taker = fake_seq(list(range(1000, 1000 + 6 * BS)), request_id="t")
    bm.admit(taker, [])
    bm.grow(taker, 3 * BS)                                   # evicts 3 blocks: the never-hashed/b ones
    assert len(bm.find_cached_prefix(fake_seq(toks(1, 2) + [0], request_id="p"))) == 2
    bm.grow(taker, 6 * BS)
    assert bm.find_cached_prefix(fake_seq(toks(1, 2) + [0], request_id="p")) == []
    assert bm.find_cached_prefix(fake_seq(toks(3, 4) + [0], request_id="q")) == []
    bm.free_sequence(taker)


def test_evicted_block_is_forgotten_and_not_served_with_new_contents():
    bm = BlockManager(3, BS)
    a = fake_seq(toks(1, 2) + [0], request_id="a")
    start(bm, a)
    bm.free_sequence(a)
    b = fake_seq(toks(7, 8, 9), request_id="b")              # needs all 3 blocks: evicts a's
    start(bm, b)
    assert bm.find_cached_prefix(fake_seq(toks(1, 2) + [0], request_id="p")) == []
    assert len(bm.cached) == len(bm.block_hash) == len(bm.block_tokens) == 3
    assert bm.find_cached_prefix(fake_seq(toks(7, 8, 9) + [0], request_id="q")) == b.block_table
    bm.free_sequence(b)
    books(bm, [])


def test_identical_block_computed_twice_stays_private():
    """Two sequences that computed the same block concurrently: one copy is cached, the other is
    an ordinary private block that is freed normally."""
    bm = BlockManager(8, BS)
    a = fake_seq(toks(1) + [2], request_id="a")
    b = fake_seq(toks(1) + [3], request_id="b")
    bm.admit(a, [])
    bm.admit(b, [])
    bm.grow(a, 5)
    bm.grow(b, 5)
    for s in (a, b):
        s.num_computed_tokens = 5
        bm.commit(s)
    assert a.block_table[0] != b.block_table[0]
    first_a = a.block_table[0]
    assert bm.cached[bm.seq_hashes["a"][0]] == a.block_table[0]
    assert b.block_table[0] not in bm.block_hash
    bm.free_sequence(a)
    bm.free_sequence(b)
    books(bm, [])
    # the cached copy (a's) survives the frees and serves the next request
    assert bm.find_cached_prefix(fake_seq(toks(1) + [0], request_id="p")) == [first_a]


def test_prefix_caching_disabled():
    bm = BlockManager(8, BS, enable_prefix_caching=False)
    a = fake_seq(toks(1, 2) + [0], request_id="a")
    start(bm, a)
    assert bm.cached == {} and bm.block_hash == {}
    assert bm.find_cached_prefix(fake_seq(toks(1, 2) + [0], request_id="b")) == []
    bm.free_sequence(a)
    books(bm, [])


def test_reset_prefix_cache():
    bm = BlockManager(8, BS)
    a = fake_seq(toks(1, 2) + [0], request_id="a")
    start(bm, a)
    bm.free_sequence(a)
    bm.reset_prefix_cache()
    assert bm.find_cached_prefix(fake_seq(toks(1, 2) + [0], request_id="b")) == []
    books(bm, [])


def test_hit_statistics():
    bm = BlockManager(8, BS)
    a = fake_seq(toks(1, 2) + [0], request_id="a")
    start(bm, a)
    b = fake_seq(toks(1, 2) + [5, 5], request_id="b")
    start(bm, b)
    assert bm.prefix_queries == a.num_tokens + b.num_tokens
    assert bm.prefix_hits == 2 * BS
    bm.free_sequence(a)
    bm.free_sequence(b)
