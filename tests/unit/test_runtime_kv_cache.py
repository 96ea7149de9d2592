"""runtime.kv_cache: reference counts, prefix hits, LRU eviction, no leaks under random traffic."""

import random

import pytest

from runtime.kv_cache import BlockManager, block_hash


def test_allocate_and_free_counts():
    bm = BlockManager(8, 4)
    assert bm.allocate("a", 9)  # 3 blocks
    assert len(bm.blocks_of("a")) == 3 and bm.num_free == 5
    assert bm.allocate("a", 12) and len(bm.blocks_of("a")) == 3  # still fits
    assert bm.allocate("a", 13) and len(bm.blocks_of("a")) == 4
    assert not bm.allocate("b", 17)  # 5 blocks > 4 free: refused, nothing changed
    assert "b" not in bm.held and bm.num_free == 4
    bm.check()
    bm.free("a")
    bm.assert_no_leaks()


def test_prefix_is_shared_and_reference_counted():
    bm = BlockManager(8, 4)
    prompt = list(range(10))  # two full blocks + 2 tokens
    assert bm.cached_prefix(prompt) == []
    bm.allocate("a", 10)
    bm.commit_full_blocks("a", prompt, 10)
    a_blocks = bm.blocks_of("a")
    hit = bm.cached_prefix(prompt + [99])
    assert hit == a_blocks[:2]
    assert bm.allocate("b", 11, hit)
    assert bm.ref[a_blocks[0]] == 2 and bm.ref[a_blocks[2]] == 1
    assert bm.blocks_of("b")[:2] == a_blocks[:2] and bm.blocks_of("b")[2] != a_blocks[2]
    bm.check()
    bm.free("a")
    bm.free("b")
    bm.assert_no_leaks()
    # freed but still cached: a new request hits without recomputing
    assert bm.cached_prefix(prompt) == a_blocks[:2]


def test_last_token_is_never_served_from_cache():
    bm = BlockManager(8, 4)
    prompt = list(range(8))  # exactly two blocks
    bm.allocate("a", 8)
    bm.commit_full_blocks("a", prompt, 8)
    assert len(bm.cached_prefix(prompt)) == 1  # the second block is recomputed to get logits


def test_hash_chain_depends_on_prefix():
    assert block_hash(b"", [1, 2]) != block_hash(block_hash(b"", [0, 0]), [1, 2])
    assert block_hash(b"", [1, 23]) != block_hash(b"", [12, 3])


def test_eviction_takes_least_recently_freed_and_forgets_hash():
    bm = BlockManager(3, 2)
    bm.allocate("a", 2)
    bm.commit_full_blocks("a", [1, 2], 2)
    bm.allocate("b", 2)
    bm.commit_full_blocks("b", [3, 4], 2)
    bm.free("a")
    bm.free("b")
    # free queue: untouched block 2 first, then a's, then b's
    bm.allocate("c", 4)  # takes block 2 and a's block (evicting [1, 2])
    assert bm.stats.evictions == 1
    assert bm.cached_prefix([1, 2, 0]) == []
    assert len(bm.cached_prefix([3, 4, 0])) == 1
    bm.free("c")
    bm.assert_no_leaks()


def test_reviving_cached_blocks_counts_against_free_space():
    bm = BlockManager(2, 2)
    bm.allocate("a", 2)
    bm.commit_full_blocks("a", [5, 6], 2)
    bm.free("a")
    hit = bm.cached_prefix([5, 6, 7])
    assert bm.allocate("b", 3, hit)
    bm.check()
    assert not bm.allocate("c", 1)
    bm.free("b")
    bm.assert_no_leaks()


@pytest.mark.parametrize("seed", range(5))
def test_random_traffic_keeps_invariants_and_leaks_nothing(seed):
    rnd = random.Random(seed)
    bm = BlockManager(24, 4)
    prefixes = [[rnd.randrange(50) for _ in range(8)] for _ in range(3)]
    live: dict[str, tuple[list[int], int]] = {}
    for i in range(400):
        if live and (rnd.random() < 0.3 or len(live) > 5):
            rid = rnd.choice(sorted(live))
            bm.free(rid)
            del live[rid]
        elif rnd.random() < 0.5 and live:
            rid = rnd.choice(sorted(live))
            tokens, n = live[rid]
            tokens = tokens + [rnd.randrange(50) for _ in range(rnd.randrange(1, 6))]
            if bm.allocate(rid, len(tokens)):
                bm.commit_full_blocks(rid, tokens, len(tokens))
                live[rid] = (tokens, len(tokens))
        else:
            rid = f"r{i}"
            tokens = rnd.choice(prefixes) + [rnd.randrange(50) for _ in range(rnd.randrange(1, 10))]
            hit = bm.cached_prefix(tokens)
            if bm.allocate(rid, len(tokens), hit):
                bm.commit_full_blocks(rid, tokens, len(tokens))
                live[rid] = (tokens, len(tokens))
        bm.check()
    for rid in list(live):
        bm.free(rid)
    bm.assert_no_leaks()
    assert bm.stats.hit_tokens > 0 and bm.stats.evictions > 0


def test_leak_is_reported():
    from runtime.kv_cache import BlockLeakError

    bm = BlockManager(4, 2)
    bm.allocate("a", 3)
    with pytest.raises(BlockLeakError, match="requests still hold blocks: \\['a'\\]"):
        bm.assert_no_leaks()
    bm.ref[0] += 1
    with pytest.raises(BlockLeakError, match="reference counts differ"):
        bm.check()


@pytest.mark.parametrize("seed", range(4))
def test_offload_moves_evicted_blocks_to_host_and_back_with_their_content(seed):
    """Random traffic over a small device cache and fewer host slots; copies applied in the order decided."""
    rnd = random.Random(seed)
    bs, n_dev, n_host = 4, 10, 6
    bm = BlockManager(n_dev, bs, host_blocks=n_host)
    device: list = [None] * n_dev  # what each block holds, as the model's cache would
    host: list = [None] * n_host
    prefixes = [[rnd.randrange(50) for _ in range(8)] for _ in range(5)]
    live: dict[str, list[int]] = {}

    def copy():
        for kind, src, dst in bm.take_swaps():
            if kind == "out":
                host[dst] = device[src]
            else:
                device[dst] = host[src]

    def write(rid, tokens, start_block):
        for j, b in enumerate(bm.blocks_of(rid)[start_block:], start=start_block):
            device[b] = tuple(tokens[j * bs : (j + 1) * bs])
        bm.commit_full_blocks(rid, tokens, len(tokens))

    for i in range(500):
        if live and (rnd.random() < 0.35 or len(live) > 2):
            rid = rnd.choice(sorted(live))
            bm.free(rid)
            del live[rid]
        else:
            rid = f"r{i}"
            tokens = rnd.choice(prefixes) + [rnd.randrange(50) for _ in range(rnd.randrange(1, 6))]
            hit = bm.cached_prefix(tokens)
            if bm.allocate(rid, len(tokens), hit):
                copy()
                for j, b in enumerate(bm.blocks_of(rid)[: len(hit)]):
                    assert device[b] == tuple(tokens[j * bs : (j + 1) * bs]), f"step {i}: block {b} lost its content"
                write(rid, tokens, len(hit))
                live[rid] = tokens
            else:
                assert not bm.swaps  # a refused allocation decides nothing
        bm.check()
    for rid in list(live):
        bm.free(rid)
    bm.assert_no_leaks()
    s = bm.stats
    assert s.swaps_out > 0 and s.swaps_in > 0 and s.host_dropped > 0
    assert len(bm.host_cached) + len(bm.host_free) == n_host  # no host slot leaked


def test_offload_bookkeeping_errors_are_reported():
    from runtime.kv_cache import BlockLeakError

    bm = BlockManager(2, 2, host_blocks=2)
    tokens = [1, 2, 3]
    bm.allocate("a", 3)
    bm.commit_full_blocks("a", tokens, 3)
    bm.free("a")
    bm.allocate("b", 4)  # evicts a's full block to the host
    assert bm.swaps == [("out", 0, 0)] and bm.stats.swaps_out == 1
    bm.free("b")
    with pytest.raises(BlockLeakError, match="never carried out"):
        bm.assert_no_leaks()
    bm.take_swaps()
    bm.host_free.append(bm.host_cached[next(iter(bm.host_cached))])
    with pytest.raises(BlockLeakError, match="host slots are lost or doubly used"):
        bm.check()
