"""Paged KV-cache block manager with prefix caching (block hashes, reference counts, LRU eviction).

Blocks hold `block_size` token slots of every layer's latent cache. A full block is identified by a
hash chained over its tokens and its predecessor's hash, so a request whose prompt starts with
blocks another request already computed reuses them (reference count + 1) instead of recomputing.
Blocks whose count drops to zero go to the tail of a free queue but keep their hash until they are
handed out again (evicted) from the head: least recently freed first.

With host offload (`host_blocks` > 0) an evicted block's content is not lost: it moves to one of
`host_blocks` host slots (kept by hash, least recently stored dropped first when they run out), and a
prefix lookup that misses on the device but finds the hash on the host brings it back into a fresh
device block. The manager only keeps the books: every copy it decides on is appended to `swaps` as
("out", device block, host slot) or ("in", host slot, device block), in decision order, and the engine
carries them out (`take_swaps()`) before the step's forward pass writes or reads those blocks.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field


class BlockLeakError(AssertionError):
    """The block manager's bookkeeping is inconsistent, or blocks were not returned."""


def _require(ok: bool, message: str) -> None:
    # Not `assert`: these checks must also run under `python -O` (e.g. in a rebuilt interpreter).
    if not ok:
        raise BlockLeakError(message)


def block_hash(parent: bytes, tokens) -> bytes:
    """Chained digest of one full block of token ids."""
    h = hashlib.sha256(parent)
    h.update(b",".join(str(t).encode() for t in tokens))
    return h.digest()[:16]


@dataclass
class BlockStats:
    """Prefix-cache counters since the manager was made."""

    queried_tokens: int = 0
    hit_tokens: int = 0
    evictions: int = 0
    allocations: int = 0
    swaps_out: int = 0
    """Evicted blocks whose content moved to a host slot (host offload)."""
    swaps_in: int = 0
    """Prefix hits served by copying a block back from a host slot."""
    host_dropped: int = 0
    """Host copies discarded to make room for newer ones."""


class HostHit(bytes):
    """A prefix block found in a host slot rather than on the device (its value is the block hash)."""


@dataclass
class _Held:
    blocks: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)  # chain of this request's full blocks so far


class BlockManager:
    """Allocates cache blocks to requests; `check()` verifies every invariant."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True, host_blocks: int = 0):
        if num_blocks < 1 or block_size < 1 or host_blocks < 0:
            raise ValueError("num_blocks and block_size must be >= 1, host_blocks >= 0")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = enable_prefix_caching
        self.ref = [0] * num_blocks
        self.hash_of: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}
        self.free_queue: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.held: dict[str, _Held] = {}
        self.stats = BlockStats()
        self.host_blocks = host_blocks if enable_prefix_caching else 0
        self.host_cached: OrderedDict[bytes, int] = OrderedDict()  # hash -> host slot, least recently stored first
        self.host_free: list[int] = list(range(self.host_blocks - 1, -1, -1))
        self.swaps: list[tuple[str, int, int]] = []

    # -- queries -------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self.free_queue)

    def blocks_of(self, request_id: str) -> list[int]:
        held = self.held.get(request_id)
        return held.blocks if held else []

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def cached_prefix(self, tokens: list[int]) -> list[int | HostHit]:
        """Blocks already holding a prefix of `tokens`, leaving at least the last token to compute.

        With host offload an entry may be a HostHit: the block is in a host slot and allocate() brings it back.
        """
        if not self.prefix_caching:
            return []
        found: list[int | HostHit] = []
        parent = b""
        bs = self.block_size
        for i in range((len(tokens) - 1) // bs):
            parent = block_hash(parent, tokens[i * bs : (i + 1) * bs])
            b = self.cached.get(parent)
            if b is None:
                if parent not in self.host_cached:
                    break
                b = HostHit(parent)
            found.append(b)
        self.stats.queried_tokens += len(tokens)
        self.stats.hit_tokens += len(found) * bs
        return found

    # -- changes -------------------------------------------------------------------------------
    def allocate(self, request_id: str, total_tokens: int, prefix: list[int] | None = None) -> bool:
        """Make the request hold enough blocks for `total_tokens`; False (and no change) if they don't fit."""
        held = self.held.get(request_id)
        have = len(held.blocks) if held else 0
        prefix = prefix or []
        if prefix and have:
            raise ValueError(f"request {request_id}: a cached prefix can only be taken at first allocation")
        new = self.blocks_needed(total_tokens) - have - len(prefix)
        on_host = sum(1 for b in prefix if isinstance(b, HostHit))
        revived = sum(1 for b in prefix if not isinstance(b, HostHit) and self.ref[b] == 0)
        if max(new, 0) + revived + on_host > self.num_free:
            return False
        if held is None:
            held = self.held[request_id] = _Held()
        for b in prefix:  # revive the device-resident prefix first, so no swap-in evicts one of them
            if not isinstance(b, HostHit) and self.ref[b] == 0:
                del self.free_queue[b]
        # Take the host-resident prefix's slots out of the store first, so no swap-out below reuses one of them.
        slots = {bytes(b): self.host_cached.pop(bytes(b)) for b in prefix if isinstance(b, HostHit)}
        for entry in prefix:
            if isinstance(entry, HostHit):
                b = self._take_free_block()
                slot = slots[bytes(entry)]
                self.swaps.append(("in", slot, b))
                self.host_free.append(slot)
                self.stats.swaps_in += 1
                self.cached[bytes(entry)] = b
                self.hash_of[b] = bytes(entry)
                self.ref[b] = 1
                held.blocks.append(b)
                held.hashes.append(bytes(entry))
                continue
            self.ref[entry] += 1
            held.blocks.append(entry)
            held.hashes.append(self.hash_of[entry])
        for _ in range(max(new, 0)):
            b = self._take_free_block()
            self.ref[b] = 1
            held.blocks.append(b)
            self.stats.allocations += 1
        return True

    def _take_free_block(self) -> int:
        """The least recently freed block, its old content evicted (moved to a host slot under offload)."""
        b, _ = self.free_queue.popitem(last=False)
        old = self.hash_of[b]
        if old is not None:
            if self.cached.get(old) == b:
                del self.cached[old]
                if self.host_blocks:
                    self._store_on_host(old, b)
            self.hash_of[b] = None
            self.stats.evictions += 1
        return b

    def _store_on_host(self, h: bytes, b: int) -> None:
        if not self.host_free:
            _, dropped = self.host_cached.popitem(last=False)
            self.host_free.append(dropped)
            self.stats.host_dropped += 1
        slot = self.host_free.pop()
        self.host_cached[h] = slot
        self.swaps.append(("out", b, slot))
        self.stats.swaps_out += 1

    def take_swaps(self) -> list[tuple[str, int, int]]:
        """The copies decided since the last call, in order: ("out", block, slot) / ("in", slot, block)."""
        swaps, self.swaps = self.swaps, []
        return swaps

    def commit_full_blocks(self, request_id: str, tokens: list[int], num_computed: int) -> None:
        """Publish the hashes of blocks now fully computed (tokens[:num_computed]) for reuse."""
        if not self.prefix_caching:
            return
        held = self.held[request_id]
        bs = self.block_size
        for i in range(len(held.hashes), num_computed // bs):
            parent = held.hashes[-1] if held.hashes else b""
            h = block_hash(parent, tokens[i * bs : (i + 1) * bs])
            held.hashes.append(h)
            b = held.blocks[i]
            if h not in self.cached and self.hash_of[b] is None:
                self.cached[h] = b
                self.hash_of[b] = h

    def free(self, request_id: str) -> None:
        """Drop the request's references; tail blocks first, so they are evicted first."""
        held = self.held.pop(request_id, None)
        if held is None:
            return
        for b in reversed(held.blocks):
            self.ref[b] -= 1
            if self.ref[b] == 0:
                self.free_queue[b] = None

    # -- invariants ----------------------------------------------------------------------------
    def check(self) -> None:
        """Raise BlockLeakError if counts, free queue and hash map disagree."""
        counts = [0] * self.num_blocks
        for held in self.held.values():
            for b in held.blocks:
                counts[b] += 1
        _require(counts == self.ref, "reference counts differ from the blocks requests hold")
        for b in range(self.num_blocks):
            _require((self.ref[b] == 0) == (b in self.free_queue), f"block {b}: free queue disagrees with count")
        for h, b in self.cached.items():
            _require(self.hash_of[b] == h, f"block {b}: hash map disagrees")
        slots = list(self.host_cached.values())
        _require(
            sorted(slots + self.host_free) == list(range(self.host_blocks)),
            "host slots are lost or doubly used (held by a hash and free, or by two hashes)",
        )
        _require(
            not (self.host_cached.keys() & self.cached.keys()), "a block is cached both on the device and the host"
        )

    def state(self) -> dict:
        """Everything the manager knows, as plain values: reference counts, each block's hash, the hash map, the
        free queue in LRU order (next handed out first), each request's blocks and hash chain, the counters.
        The compiled twin (runtime/_hostpath.pyx) returns the same for the same calls."""
        s = self.stats
        return {
            "ref": list(self.ref),
            "hash_of": list(self.hash_of),
            "cached": dict(self.cached),
            "free_queue": list(self.free_queue),
            "held": {rid: (list(h.blocks), list(h.hashes)) for rid, h in self.held.items()},
            "stats": (s.queried_tokens, s.hit_tokens, s.evictions, s.allocations),
        }

    def assert_no_leaks(self) -> None:
        """After every request finished: nothing held, every block free."""
        self.check()
        _require(not self.held, f"requests still hold blocks: {sorted(self.held)}")
        _require(self.num_free == self.num_blocks, f"{self.num_blocks - self.num_free} blocks leaked")
        _require(not self.swaps, f"{len(self.swaps)} decided cache copies were never carried out")
