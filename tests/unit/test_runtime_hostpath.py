"""runtime.hostpath: the compiled host hot path (runtime/_hostpath.pyx) against the pure-Python reference.

Both implementations are driven side by side with the same seeded random request streams: block-manager
operations (allocate, append, free, fork onto another request's blocks, prefix hits, evictions), and whole
scheduler loops (budget, chunking, preemption, prefix hits) with input preparation and the update's advance.
After every call the two must agree exactly: return values, reference counts, each block's hash, the hash
map, the LRU free queue's order, every request's blocks and hash chain, the counters, every request's
progress, and every array prepare_inputs and eager_batch produce. Plus the selection: the environment
variable forces the reference, and a process that imports `runtime` from the checkout without the built
module falls back to the reference and says why.
"""

import copy
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")

from runtime import hostpath  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402
from runtime.scheduler import Request, Scheduler, SchedulerConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STEP_FIELDS = ("input_ids", "positions", "slot_mapping", "block_tables", "query_start_loc", "seq_lens",
               "sample_index")
BATCH_FIELDS = ("input_ids", "positions", "slot_mapping", "query_index", "context_slots", "mask", "output_index",
                "sample_index")


@pytest.fixture(scope="module")
def paths():
    """(reference, compiled); the compiled one must be built: `pip install -e .` builds it."""
    try:
        cy = hostpath.compiled()
    except ImportError as e:
        pytest.fail(f"runtime._hostpath is not built for this interpreter ({e}); `pip install -e .` builds it")
    return hostpath.reference(), cy


def _same_state(a, b, where):
    sa, sb = a.state(), b.state()
    for key in sa:
        assert sa[key] == sb[key], f"{where}: {key} differs"
    assert a.num_free == b.num_free and a.stats == b.stats, where
    a.check()
    b.check()


# -- block manager ---------------------------------------------------------------------------------


def _block_stream(seed, ref_bm, cy_bm):
    """One random operation stream applied to both managers, compared after every operation."""
    rnd = random.Random(seed)
    bs = ref_bm.block_size
    shared = [[rnd.randrange(40) for _ in range(rnd.randrange(bs, 4 * bs))] for _ in range(3)]
    live: dict[str, list[int]] = {}
    n_ops = 0
    for i in range(300):
        op = rnd.random()
        if live and (op < 0.2 or len(live) > 6):  # free
            rid = rnd.choice(sorted(live))
            ref_bm.free(rid)
            cy_bm.free(rid)
            del live[rid]
            what = f"free {rid}"
        elif live and op < 0.55:  # append tokens (decode or a prefill chunk), publish full blocks
            rid = rnd.choice(sorted(live))
            tokens = live[rid] + [rnd.randrange(40) for _ in range(rnd.randrange(1, 2 * bs))]
            ok = ref_bm.allocate(rid, len(tokens))
            assert cy_bm.allocate(rid, len(tokens)) == ok
            if ok:
                done = rnd.randrange(len(live[rid]), len(tokens) + 1)
                ref_bm.commit_full_blocks(rid, tokens, done)
                cy_bm.commit_full_blocks(rid, tokens, done)
                live[rid] = tokens
            what = f"append to {rid}"
        else:  # a new request: from a shared prompt (prefix hits), a fork of a live one, or fresh text
            rid = f"r{i}"
            if live and op < 0.7:
                base = live[rnd.choice(sorted(live))]
                tokens = base[: rnd.randrange(1, len(base) + 1)] + [rnd.randrange(40)]
            elif op < 0.9:
                tokens = rnd.choice(shared) + [rnd.randrange(40) for _ in range(rnd.randrange(1, bs + 2))]
            else:
                tokens = [rnd.randrange(40) for _ in range(rnd.randrange(1, 3 * bs))]
            hit = ref_bm.cached_prefix(tokens)
            assert cy_bm.cached_prefix(tokens) == hit
            ok = ref_bm.allocate(rid, len(tokens), hit)
            assert cy_bm.allocate(rid, len(tokens), hit) == ok
            if ok:
                ref_bm.commit_full_blocks(rid, tokens, len(tokens))
                cy_bm.commit_full_blocks(rid, tokens, len(tokens))
                live[rid] = tokens
            what = f"new {rid} ({len(hit)} cached blocks)"
        for rid in live:
            assert ref_bm.blocks_of(rid) == cy_bm.blocks_of(rid)
        _same_state(ref_bm, cy_bm, f"seed {seed} op {i}: {what}")
        n_ops += 1
    for rid in sorted(live):
        ref_bm.free(rid)
        cy_bm.free(rid)
    _same_state(ref_bm, cy_bm, f"seed {seed}: after freeing everything")
    ref_bm.assert_no_leaks()
    cy_bm.assert_no_leaks()
    return n_ops


@pytest.mark.parametrize("seed", range(24))
def test_block_manager_streams_agree(paths, seed):
    ref, cy = paths
    rnd = random.Random(1000 + seed)
    num_blocks, block_size = rnd.choice([(6, 2), (12, 4), (24, 4), (40, 3), (9, 1)])
    caching = seed % 6 != 5
    a = ref.block_manager(num_blocks, block_size, caching)
    b = cy.block_manager(num_blocks, block_size, caching)
    assert _block_stream(seed, a, b) == 300
    if caching:
        assert a.stats.hit_tokens > 0 and a.stats.allocations > num_blocks  # prefix hits and reuse happened
    assert a.stats.evictions == b.stats.evictions


def test_streams_exercise_evictions_and_revivals(paths):
    """The streams above are not vacuous: over the seeds, evictions and revived cached blocks both happen."""
    ref, cy = paths
    evictions = hits = 0
    for seed in range(6):
        a, b = ref.block_manager(12, 4), cy.block_manager(12, 4)
        _block_stream(seed, a, b)
        evictions += b.stats.evictions
        hits += b.stats.hit_tokens
    assert evictions > 20 and hits > 50


def test_block_hash_and_errors_agree(paths):
    from runtime import _hostpath
    from runtime.kv_cache import block_hash

    for tokens in ([], [0], [1, 23], [12, 3], [-7, 2**40, 9], list(range(100))):
        for parent in (b"", b"\x00" * 16, block_hash(b"", [5])):
            assert _hostpath.block_hash(parent, tokens) == block_hash(parent, tokens)
    ref, cy = paths
    for bm in (ref.block_manager(4, 2), cy.block_manager(4, 2)):
        bm.allocate("a", 3)
        with pytest.raises(ValueError, match="a cached prefix can only be taken at first allocation"):
            bm.allocate("a", 5, [0])
        with pytest.raises(Exception, match="requests still hold blocks: \\['a'\\]"):
            bm.assert_no_leaks()
        assert not bm.allocate("b", 9) and "b" not in bm.held
    with pytest.raises(ValueError, match="must be >= 1"):
        cy.block_manager(0, 4)


# -- scheduler, input preparation, advance ---------------------------------------------------------


class _Side:
    """One implementation's scheduler with its own copies of the requests."""

    def __init__(self, path, cfg, num_blocks, block_size, caching):
        self.path = path
        self.blocks = path.block_manager(num_blocks, block_size, caching)
        self.sched = Scheduler(cfg, self.blocks, path.schedule_step)
        self.reqs: dict[str, Request] = {}

    def add(self, req):
        r = copy.deepcopy(req)
        self.reqs[r.request_id] = r
        self.sched.add(r)


def _progress(side):
    return {rid: (r.status, r.num_computed, r.num_cached_tokens, r.num_preemptions, list(r.output))
            for rid, r in side.reqs.items()}


def _same_arrays(x, y, fields, where):
    for f in fields:
        u, v = getattr(x, f), getattr(y, f)
        assert u.dtype == v.dtype and u.shape == v.shape, f"{where}: {f} {u.dtype}{u.shape} vs {v.dtype}{v.shape}"
        assert np.array_equal(u, v), f"{where}: {f} differs\n{u}\n{v}"


def _scheduler_stream(seed, ref, cy, *, with_eager_batch):
    rnd = random.Random(seed)
    block_size = rnd.choice([2, 4, 8])
    num_blocks = rnd.randrange(10, 30)
    cfg = SchedulerConfig(max_num_batched_tokens=rnd.choice([8, 16, 32, 48]), max_num_seqs=rnd.choice([2, 4, 8]),
                          enable_chunked_prefill=seed % 5 != 4)
    caching = seed % 7 != 6
    sides = [_Side(p, cfg, num_blocks, block_size, caching) for p in (ref, cy)]
    systems = [[rnd.randrange(50) for _ in range(rnd.randrange(block_size, 4 * block_size))] for _ in range(3)]
    preemptions = prefills = 0
    for step in range(120):
        if rnd.random() < 0.45 and step < 90:
            own = [rnd.randrange(50) for _ in range(rnd.randrange(1, 2 * block_size))]
            prompt = (rnd.choice(systems) + own) if rnd.random() < 0.7 else own
            if not cfg.enable_chunked_prefill:
                prompt = prompt[: cfg.max_num_batched_tokens]
            max_tokens = rnd.randrange(1, 12)
            if len(prompt) + max_tokens <= num_blocks * block_size:
                req = Request(f"q{step}", prompt, SamplingParams(max_tokens=max_tokens, stop_token_ids=[49]))
                for s in sides:
                    s.add(req)
        if not sides[0].sched.has_work():
            assert not sides[1].sched.has_work()
            continue
        steps = [s.sched.schedule() for s in sides]
        where = f"seed {seed} step {step}"
        assert [(r.request_id, n) for r, n in steps[0].items] == [(r.request_id, n) for r, n in steps[1].items], where
        assert [r.request_id for r in steps[0].preempted] == [r.request_id for r in steps[1].preempted], where
        preemptions += len(steps[0].preempted)
        _same_state(sides[0].blocks, sides[1].blocks, where + " after schedule")
        if not steps[0].items:
            continue
        inputs = [s.path.prepare_inputs(st, s.blocks) for s, st in zip(sides, steps)]
        _same_arrays(inputs[0], inputs[1], STEP_FIELDS, where + " prepare_inputs")
        assert (inputs[0].num_tokens, inputs[0].num_requests) == (inputs[1].num_tokens, inputs[1].num_requests)
        r_pad = cfg.max_num_seqs
        width = -(-num_blocks * block_size // block_size)
        t_pad = max(cfg.max_num_batched_tokens, steps[0].num_tokens)
        padded = [s.path.prepare_inputs(st, s.blocks, width=width, pad_block=num_blocks, tokens=t_pad,
                                        requests=r_pad) for s, st in zip(sides, steps)]
        _same_arrays(padded[0], padded[1], STEP_FIELDS, where + " padded prepare_inputs")
        if with_eager_batch:
            batches = [s.path.eager_batch(x, block_size) for s, x in zip(sides, inputs)]
            _same_arrays(batches[0], batches[1], BATCH_FIELDS, where + " eager_batch")
            assert [(b.num_requests, b.max_query, b.max_context) for b in batches][0] == \
                   [(b.num_requests, b.max_query, b.max_context) for b in batches][1]
        counts = [s.path.advance(st.items, s.blocks) for s, st in zip(sides, steps)]
        assert counts[0] == counts[1], where
        prefills += counts[0][0]
        # fake sampling, the same token on both sides; finish on stop id or length as the engine does
        for s, st in zip(sides, steps):
            trng = random.Random(seed * 1000 + step)
            for req, _ in st.items:
                if req.num_computed == req.num_tokens:
                    tok = trng.randrange(50)
                    req.output.append(tok)
                    if tok in req.params.stop_token_ids or len(req.output) >= req.params.max_tokens:
                        s.sched.finish(req, "stop")
        assert _progress(sides[0]) == _progress(sides[1]), where
        _same_state(sides[0].blocks, sides[1].blocks, where + " after update")
    for s in sides:  # drain: abort what is left, nothing leaks
        for r in list(s.sched.running):
            s.sched.finish(r, "abort")
        s.sched.waiting.clear()
        s.blocks.assert_no_leaks()
    return preemptions, prefills


@pytest.mark.parametrize("seed", range(16))
def test_scheduler_prepare_and_advance_agree(paths, seed):
    ref, cy = paths
    _scheduler_stream(seed, ref, cy, with_eager_batch=False)


def test_scheduler_streams_preempt(paths):
    """Over the seeds the small caches force preemptions (and prefill work), so that path is compared too."""
    ref, cy = paths
    total = [_scheduler_stream(seed, ref, cy, with_eager_batch=False) for seed in range(16)]
    assert sum(p for p, _ in total) > 5 and sum(f for _, f in total) > 100


@pytest.mark.runtime
@pytest.mark.parametrize("seed", range(6))
def test_eager_batch_agrees(paths, seed):
    pytest.importorskip("mindspore")
    ref, cy = paths
    _scheduler_stream(100 + seed, ref, cy, with_eager_batch=True)


# -- selection -------------------------------------------------------------------------------------


def test_environment_forces_the_reference(paths):
    for value in ("1", "true", "yes"):
        hp = hostpath.select({hostpath.FORCE_REFERENCE_ENV: value})
        assert hp.name == "python" and f"{hostpath.FORCE_REFERENCE_ENV}={value}" in hp.reason
    assert hostpath.select({hostpath.FORCE_REFERENCE_ENV: "0"}).name == "cython"
    assert hostpath.select({}).name == "cython"


def test_stale_or_missing_extension_falls_back(paths, monkeypatch):
    from runtime import _hostpath

    monkeypatch.setattr(_hostpath, "INTERFACE", hostpath.EXTENSION_INTERFACE + 1)
    hp = hostpath.select({})
    assert hp.name == "python" and "stale build" in hp.reason
    monkeypatch.setitem(sys.modules, "runtime._hostpath", None)  # import now raises ImportError
    hp = hostpath.select({})
    assert hp.name == "python" and "runtime._hostpath unavailable" in hp.reason


def test_checkout_on_sys_path_without_the_build_runs_the_reference(tmp_path):
    """As in a training venv whose .pth points at the checkout: `runtime` comes from the source tree, where no
    compiled module lies, so the reference runs and says why."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from runtime import hostpath; import runtime; "
            "hp = hostpath.selected(); print(runtime.__file__); print(hp.name); print(hp.reason)")
    # -S: no site, so no editable-install hook (nor .pth files); numpy comes from the site-packages, or the directory
    # it was found in (a build's verify venv sees the runtime's dependencies through a .pth), put after the checkout
    site = [p for p in sys.path if p.endswith("site-packages")] + [str(Path(np.__file__).parents[1])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site)}
    env.pop(hostpath.FORCE_REFERENCE_ENV, None)
    out = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    file, name, reason = out.stdout.splitlines()[:3]
    assert Path(file).parent == ROOT / "runtime"
    assert not list((ROOT / "runtime").glob("_hostpath*.so")), "a compiled module in the source tree"
    assert name == "python" and "runtime._hostpath unavailable" in reason
