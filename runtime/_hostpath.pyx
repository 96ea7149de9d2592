# cython: language_level=3
"""The engine's host hot path compiled: block manager, scheduler budget loop, step input preparation.

A drop-in twin of the pure-Python reference (runtime/kv_cache.py `BlockManager` and `block_hash`,
runtime/scheduler.py `schedule_step` and `advance`, runtime/inputs.py `prepare_inputs` and
`eager_batch`): the same calls, the same state after every call and the same outputs, which
tests/unit/test_runtime_hostpath.py checks side by side over random request streams. runtime/hostpath.py
chooses between the two; nothing imports this module directly.

Where it differs inside: reference counts and the LRU free queue are C arrays (the queue a doubly linked
list over block ids, so taking a revived block out of the middle is O(1)); a block's hash input is
formatted into a C buffer instead of joining `str()`s; the step's index arrays are filled by loops over
typed memoryviews instead of a dozen small NumPy calls. NumPy is used only to allocate the arrays, so the
build needs no NumPy headers.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport free as c_free
from libc.stdlib cimport malloc

import hashlib

import numpy as np

from runtime.kv_cache import BlockLeakError, BlockStats
from runtime.scheduler import ScheduledStep, Status

INTERFACE = 1
"""Bumped whenever the calls or state this module shares with the reference change; runtime/hostpath.py
refuses a built module whose INTERFACE differs (a stale build of an older .pyx)."""

cdef object _sha256 = hashlib.sha256
cdef object _RUNNING = Status.RUNNING
cdef object _WAITING = Status.WAITING
cdef object _StepInputs = None  # runtime.inputs.StepInputs, imported on first use (inputs imports numpy only)
cdef object _BatchInputs = None  # runtime.model.BatchInputs, imported on first use (model imports MindSpore)
cdef float _NEG = 0.0


cdef inline Py_ssize_t _format_int(char* out, long long v) noexcept:
    """Decimal digits of v at out (as str(v) writes them); returns how many chars were written."""
    cdef char tmp[24]
    cdef Py_ssize_t n = 0, k = 0
    cdef unsigned long long u
    if v < 0:
        out[0] = 45  # '-'
        k = 1
        u = <unsigned long long>(-(v + 1)) + 1
    else:
        u = <unsigned long long>v
    while True:
        tmp[n] = <char>(48 + <int>(u % 10))  # '0' + digit
        n += 1
        u //= 10
        if u == 0:
            break
    while n > 0:
        n -= 1
        out[k] = tmp[n]
        k += 1
    return k


cdef bytes _block_hash(bytes parent, list tokens, Py_ssize_t lo, Py_ssize_t hi):
    """block_hash(parent, tokens[lo:hi]): sha256 over parent then the ids joined by commas, first 16 bytes."""
    cdef Py_ssize_t plen = len(parent)
    if hi > len(tokens):  # as the reference's slice tokens[lo:hi] does
        hi = len(tokens)
    if lo > hi:
        lo = hi
    cdef Py_ssize_t cap = plen + (hi - lo) * 21 + 1
    cdef char* buf = <char*>malloc(cap)
    cdef Py_ssize_t k = plen, i
    cdef const char* p = parent
    if buf == NULL:
        raise MemoryError()
    try:
        for i in range(plen):
            buf[i] = p[i]
        for i in range(lo, hi):
            if i > lo:
                buf[k] = 44  # ','
                k += 1
            k += _format_int(buf + k, tokens[i])
        data = PyBytes_FromStringAndSize(buf, k)
    finally:
        c_free(buf)
    return _sha256(data).digest()[:16]


def block_hash(parent, tokens):
    """Chained digest of one full block of token ids (the reference's runtime.kv_cache.block_hash)."""
    cdef list toks = tokens if type(tokens) is list else list(tokens)
    return _block_hash(bytes(parent), toks, 0, len(toks))


cdef class _Held:
    """One request's blocks and the hash chain of its full blocks so far."""

    cdef public list blocks
    cdef public list hashes

    def __cinit__(self):
        self.blocks = []
        self.hashes = []


cdef class BlockManager:
    """Allocates cache blocks to requests (runtime.kv_cache.BlockManager's twin); `check()` verifies every invariant."""

    cdef readonly int num_blocks
    cdef readonly int block_size
    cdef readonly bint prefix_caching
    cdef readonly dict cached
    """hash -> block holding it."""
    cdef readonly dict held
    """request id -> its _Held."""
    cdef list _hash_of
    cdef int* _ref
    cdef int* _next  # free queue links over block ids; index num_blocks is the sentinel (head/tail)
    cdef int* _prev
    cdef char* _in_free
    cdef int _num_free
    cdef long long _queried, _hit, _evictions, _allocations

    def __cinit__(self, int num_blocks, int block_size, bint enable_prefix_caching=True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self._ref = <int*>malloc(num_blocks * sizeof(int))
        self._next = <int*>malloc((num_blocks + 1) * sizeof(int))
        self._prev = <int*>malloc((num_blocks + 1) * sizeof(int))
        self._in_free = <char*>malloc(num_blocks)
        if not (self._ref and self._next and self._prev and self._in_free):
            raise MemoryError()

    def __init__(self, int num_blocks, int block_size, bint enable_prefix_caching=True):
        cdef int b, s = num_blocks
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = enable_prefix_caching
        self.cached = {}
        self.held = {}
        self._hash_of = [None] * num_blocks
        for b in range(num_blocks):
            self._ref[b] = 0
            self._in_free[b] = 1
            self._next[b] = b + 1
            self._prev[b] = b - 1 if b > 0 else s
        self._next[s] = 0
        self._prev[s] = s - 1
        self._num_free = num_blocks
        self._queried = self._hit = self._evictions = self._allocations = 0

    def __dealloc__(self):
        c_free(self._ref)
        c_free(self._next)
        c_free(self._prev)
        c_free(self._in_free)

    # -- free queue ----------------------------------------------------------------------------
    cdef inline void _unlink(self, int b) noexcept:
        self._next[self._prev[b]] = self._next[b]
        self._prev[self._next[b]] = self._prev[b]
        self._in_free[b] = 0
        self._num_free -= 1

    cdef inline void _push_tail(self, int b) noexcept:
        cdef int s = self.num_blocks
        cdef int last = self._prev[s]
        self._next[last] = b
        self._prev[b] = last
        self._next[b] = s
        self._prev[s] = b
        self._in_free[b] = 1
        self._num_free += 1

    # -- queries -------------------------------------------------------------------------------
    @property
    def num_free(self):
        return self._num_free

    @property
    def ref(self):
        """A copy of the reference counts, per block."""
        return [self._ref[b] for b in range(self.num_blocks)]

    @property
    def hash_of(self):
        """A copy of each block's hash (None when it holds none)."""
        return list(self._hash_of)

    @property
    def free_queue(self):
        """The free blocks, least recently freed (next to be handed out) first."""
        cdef int s = self.num_blocks
        cdef int b = self._next[s]
        out = []
        while b != s:
            out.append(b)
            b = self._next[b]
        return out

    @property
    def stats(self):
        """Prefix-cache counters since the manager was made (a snapshot)."""
        return BlockStats(self._queried, self._hit, self._evictions, self._allocations)

    cpdef list blocks_of(self, str request_id):
        cdef _Held held = self.held.get(request_id)
        return held.blocks if held is not None else []

    cpdef long long blocks_needed(self, long long num_tokens):
        return -(-num_tokens // self.block_size)

    cpdef list cached_prefix(self, list tokens):
        """Blocks already holding a prefix of `tokens`, leaving at least the last token to compute."""
        cdef list found = []
        cdef bytes parent = b""
        cdef Py_ssize_t i, n = len(tokens), bs = self.block_size
        if not self.prefix_caching:
            return found
        for i in range((n - 1) // bs if n > 0 else 0):
            parent = _block_hash(parent, tokens, i * bs, (i + 1) * bs)
            b = self.cached.get(parent)
            if b is None:
                break
            found.append(b)
        self._queried += n
        self._hit += len(found) * bs
        return found

    # -- changes -------------------------------------------------------------------------------
    cpdef bint allocate(self, str request_id, long long total_tokens, list prefix=None) except -1:
        """Make the request hold enough blocks for `total_tokens`; False (and no change) if they don't fit."""
        cdef _Held held = self.held.get(request_id)
        cdef Py_ssize_t have = len(held.blocks) if held is not None else 0
        cdef Py_ssize_t new, revived = 0, i, np_ = 0 if prefix is None else len(prefix)
        cdef int b
        if np_ and have:
            raise ValueError(f"request {request_id}: a cached prefix can only be taken at first allocation")
        new = self.blocks_needed(total_tokens) - have - np_
        for i in range(np_):
            b = prefix[i]
            if not 0 <= b < self.num_blocks:
                raise IndexError(f"block {b} outside the cache (0..{self.num_blocks - 1})")
            if self._ref[b] == 0:
                revived += 1
        if new < 0:
            new = 0
        if new + revived > self._num_free:
            return False
        if held is None:
            held = _Held()
            self.held[request_id] = held
        for i in range(np_):
            b = prefix[i]
            if self._ref[b] == 0:
                self._unlink(b)
            self._ref[b] += 1
            held.blocks.append(b)
            held.hashes.append(self._hash_of[b])
        for i in range(new):
            b = self._next[self.num_blocks]
            self._unlink(b)
            old = self._hash_of[b]
            if old is not None:  # evict: the block's old content is gone
                if self.cached.get(old) == b:
                    del self.cached[old]
                self._hash_of[b] = None
                self._evictions += 1
            self._ref[b] = 1
            held.blocks.append(b)
            self._allocations += 1
        return True

    cdef void _commit(self, _Held held, list prompt, list output, Py_ssize_t num_computed) except *:
        """commit_full_blocks over the token list prompt + output (output may be None: prompt is all)."""
        cdef Py_ssize_t i, bs = self.block_size
        cdef Py_ssize_t first = len(held.hashes), last = num_computed // bs
        cdef list tokens
        cdef bytes parent, h
        cdef int b
        if first >= last:
            return
        tokens = prompt if output is None or not output else prompt + output
        for i in range(first, last):
            parent = held.hashes[i - 1] if i > 0 else b""
            h = _block_hash(parent, tokens, i * bs, (i + 1) * bs)
            held.hashes.append(h)
            b = held.blocks[i]
            if h not in self.cached and self._hash_of[b] is None:
                self.cached[h] = b
                self._hash_of[b] = h

    cpdef commit_full_blocks(self, str request_id, list tokens, long long num_computed):
        """Publish the hashes of blocks now fully computed (tokens[:num_computed]) for reuse."""
        if not self.prefix_caching:
            return
        self._commit(self.held[request_id], tokens, None, num_computed)

    cpdef free(self, str request_id):
        """Drop the request's references; tail blocks first, so they are evicted first."""
        cdef _Held held = self.held.pop(request_id, None)
        cdef Py_ssize_t i
        cdef int b
        if held is None:
            return
        for i in range(len(held.blocks) - 1, -1, -1):
            b = held.blocks[i]
            self._ref[b] -= 1
            if self._ref[b] == 0:
                self._push_tail(b)

    # -- invariants ----------------------------------------------------------------------------
    def check(self):
        """Raise BlockLeakError if counts, free queue, its links and hash map disagree."""
        counts = [0] * self.num_blocks
        for held in self.held.values():
            for b in (<_Held>held).blocks:
                counts[b] += 1
        if counts != self.ref:
            raise BlockLeakError("reference counts differ from the blocks requests hold")
        queue = self.free_queue
        if len(queue) != self._num_free or len(set(queue)) != len(queue):
            raise BlockLeakError("free queue links disagree with its length")
        in_queue = set(queue)
        for b in range(self.num_blocks):
            if (self._ref[b] == 0) != (b in in_queue) or bool(self._in_free[b]) != (b in in_queue):
                raise BlockLeakError(f"block {b}: free queue disagrees with count")
        for h, b in self.cached.items():
            if self._hash_of[b] != h:
                raise BlockLeakError(f"block {b}: hash map disagrees")

    def assert_no_leaks(self):
        """After every request finished: nothing held, every block free."""
        self.check()
        if self.held:
            raise BlockLeakError(f"requests still hold blocks: {sorted(self.held)}")
        if self._num_free != self.num_blocks:
            raise BlockLeakError(f"{self.num_blocks - self._num_free} blocks leaked")

    def state(self):
        """Everything the manager knows, as plain values (compared with the reference's `state()`)."""
        return {
            "ref": self.ref,
            "hash_of": self.hash_of,
            "cached": dict(self.cached),
            "free_queue": self.free_queue,
            "held": {rid: (list((<_Held>h).blocks), list((<_Held>h).hashes)) for rid, h in self.held.items()},
            "stats": (self._queried, self._hit, self._evictions, self._allocations),
        }


cdef inline Py_ssize_t _num_tokens(req):
    return len(<list>req.prompt) + len(<list>req.output)


def schedule_step(sched):
    """One step's ScheduledStep for `sched` (a runtime.scheduler.Scheduler over this module's BlockManager)."""
    cdef BlockManager blocks = sched.blocks
    cfg = sched.cfg
    cdef long long budget = cfg.max_num_batched_tokens
    cdef long long n, start, remaining, computed
    cdef Py_ssize_t max_seqs = cfg.max_num_seqs
    cdef bint chunked = cfg.enable_chunked_prefill
    cdef list running = sched.running
    waiting = sched.waiting
    cdef list items = []
    cdef list preempted = []
    cdef list prefix
    for req in list(running):
        if budget == 0:
            break
        if req.status is not _RUNNING:  # preempted earlier in this loop
            continue
        computed = req.num_computed
        n = _num_tokens(req) - computed
        if n > budget:
            n = budget
        while not blocks.allocate(req.request_id, computed + n, None):
            victim = running[-1]
            sched._preempt(victim)
            preempted.append(victim)
            if victim is req:
                break
        if req.status is not _RUNNING:
            continue
        items.append((req, n))
        budget -= n

    while waiting and budget > 0 and not preempted and len(running) < max_seqs:
        req = waiting[0]
        prefix = blocks.cached_prefix(<list>req.prompt + <list>req.output)
        start = len(prefix) * blocks.block_size
        remaining = _num_tokens(req) - start
        if not chunked and remaining > budget:
            break
        n = remaining if remaining < budget else budget
        if not blocks.allocate(req.request_id, start + n, prefix):
            break
        waiting.popleft()
        req.status = _RUNNING
        req.num_computed = start
        req.num_cached_tokens = start
        running.append(req)
        items.append((req, n))
        budget -= n
    return ScheduledStep(items, preempted)


def advance(list items, BlockManager blocks):
    """Move each scheduled request past its computed tokens and publish its newly full blocks;
    returns (prefill tokens, decode tokens) of the step."""
    cdef long long prefill = 0, decode = 0, n, computed
    cdef list output
    cdef _Held held
    for req, n in items:
        output = req.output
        computed = req.num_computed + n
        if computed == len(<list>req.prompt) + len(output) and output:
            decode += n
        else:
            prefill += n
        req.num_computed = computed
        if blocks.prefix_caching:
            held = blocks.held[req.request_id]
            blocks._commit(held, req.prompt, output, computed)
    return prefill, decode


def prepare_inputs(step, BlockManager blocks, *, width=None, int pad_block=0, tokens=None, requests=None):
    """The step's StepInputs (runtime.inputs.prepare_inputs's twin); with `tokens`/`requests`/`width` given,
    padded to that shape (graph buckets)."""
    global _StepInputs
    if _StepInputs is None:
        from runtime.inputs import StepInputs
        _StepInputs = StepInputs
    cdef int bs = blocks.block_size
    cdef list items = step.items
    cdef Py_ssize_t r = len(items), k, j, t, n_tok = 0, t_pad, r_pad, b, nb, pos, s_count = 0, c0
    cdef list held, prompt, output
    if r == 0:
        raise ValueError("zero-size array to reduction operation maximum which has no identity")
    for k in range(r):
        n_tok += <long long>(<tuple>items[k])[1]
    t_pad = tokens or n_tok
    r_pad = requests or r
    num_a = np.empty(r, np.int32)
    start_a = np.empty(r, np.int32)
    seq_a = np.empty(r, np.int32)
    cdef int[::1] num = num_a, start = start_a, seq = seq_a
    cdef long long longest = 0, have
    for k in range(r):
        req, n = <tuple>items[k]
        num[k] = n
        start[k] = req.num_computed
        seq[k] = start[k] + num[k]
        if k == 0 or seq[k] > longest:
            longest = seq[k]
    b = width or (longest + bs - 1) // bs
    tables_a = np.full((r_pad, b), pad_block, np.int32)
    cdef int[:, ::1] tables = tables_a
    for k in range(r):
        req = (<tuple>items[k])[0]
        held = blocks.blocks_of(req.request_id)
        nb = len(held)
        if nb > b:
            raise ValueError(f"request {req.request_id} holds {nb} blocks, the block table has {b} columns")
        for j in range(nb):
            tables[k, j] = <int>held[j]
    qsl_a = np.full(r_pad + 1, n_tok, np.int32)
    cdef int[::1] qsl = qsl_a
    qsl[0] = 0
    for k in range(r):
        qsl[k + 1] = qsl[k] + num[k]
    pos_a = np.zeros(t_pad, np.int32)
    slots_a = np.full(t_pad, pad_block * bs, np.int32)
    ids_a = np.zeros(t_pad, np.int32)
    cdef int[::1] positions = pos_a, slots = slots_a, ids = ids_a
    samples_a = np.empty(r, np.int32)
    cdef int[::1] samples = samples_a
    t = 0
    for k in range(r):
        req = (<tuple>items[k])[0]
        prompt = req.prompt
        output = req.output
        c0 = start[k]
        have = len(prompt) + len(output)
        if c0 + num[k] > have:
            raise ValueError(f"request {req.request_id}: {num[k]} tokens scheduled from {c0}, it has {have}")
        for j in range(num[k]):
            pos = c0 + j
            positions[t] = pos
            slots[t] = tables[k, pos // bs] * bs + pos % bs
            ids[t] = prompt[pos] if pos < len(prompt) else output[pos - len(prompt)]
            t += 1
        if seq[k] == len(prompt) + len(output):
            samples[s_count] = qsl[k + 1] - 1
            s_count += 1
    sample_a = np.zeros(max(s_count, r_pad if requests else 0), np.int32)
    sample_a[:s_count] = samples_a[:s_count]
    return _StepInputs(ids_a, pos_a, slots_a, tables_a, qsl_a, seq_a, sample_a, n_tok, r)


def eager_batch(s, int block_size):
    """The eager model's padded [R, Qmax] x [R, Lmax] index arrays (runtime.inputs.eager_batch's twin)."""
    global _BatchInputs, _NEG
    if _BatchInputs is None:
        from runtime.model import NEG, BatchInputs
        _BatchInputs = BatchInputs
        _NEG = <float>NEG
    cdef Py_ssize_t r = s.num_requests, k, j, c, qmax = 0, lmax = 0, o = 0
    cdef const int[::1] qsl = s.query_start_loc
    cdef const int[::1] seq = s.seq_lens
    cdef const int[:, ::1] tables = s.block_tables
    cdef int nk, lim
    if r == 0:
        raise ValueError("zero-size array to reduction operation maximum which has no identity")
    for k in range(r):
        nk = qsl[k + 1] - qsl[k]
        if k == 0 or nk > qmax:
            qmax = nk
        if k == 0 or seq[k] > lmax:
            lmax = seq[k]
    context_a = np.empty((r, lmax), np.int32)
    query_a = np.empty((r, qmax), np.int32)
    mask_a = np.empty((r, qmax, 1, lmax), np.float32)
    out_a = np.empty(qsl[r] - qsl[0], np.int32)
    cdef int[:, ::1] context = context_a, query = query_a
    cdef float[:, :, :, ::1] mask = mask_a
    cdef int[::1] out = out_a
    cdef float neg = _NEG
    for k in range(r):
        nk = qsl[k + 1] - qsl[k]
        for c in range(lmax):
            context[k, c] = tables[k, c // block_size] * block_size + c % block_size if c < seq[k] else 0
        for j in range(qmax):
            if j < nk:
                query[k, j] = qsl[k] + j
                out[o] = k * qmax + j
                o += 1
                lim = seq[k] - nk + j  # the query's own position: it sees every slot up to there
                for c in range(lmax):
                    mask[k, j, 0, c] = 0.0 if c <= lim else neg
            else:
                query[k, j] = 0
                for c in range(lmax):
                    mask[k, j, 0, c] = neg
    return _BatchInputs(
        input_ids=s.input_ids,
        positions=s.positions,
        slot_mapping=s.slot_mapping,
        query_index=query_a.reshape(-1),
        context_slots=context_a.reshape(-1),
        mask=mask_a,
        output_index=out_a,
        sample_index=s.sample_index,
        num_requests=r,
        max_query=qmax,
        max_context=lmax,
    )
