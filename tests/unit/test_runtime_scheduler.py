"""runtime.scheduler: token budget, decode before prefill, chunked prefill, prefix hits, preemption.

The model is left out: a step "computes" the scheduled tokens and, where a request has all its
tokens in, appends a fake sampled token, exactly as LLMEngine.step does with real logits.
"""

import pytest

pytest.importorskip("numpy")

from runtime.errors import EngineError  # noqa: E402
from runtime.kv_cache import BlockManager  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402
from runtime.scheduler import Request, Scheduler, SchedulerConfig, Status  # noqa: E402


def make(budget=16, max_seqs=8, blocks=32, block_size=4, chunked=True):
    bm = BlockManager(blocks, block_size)
    return Scheduler(SchedulerConfig(budget, max_seqs, chunked), bm), bm


def req(rid, n, max_tokens=4, first=0):
    return Request(rid, list(range(first, first + n)), SamplingParams(max_tokens=max_tokens))


def advance(s, bm, step):
    for r, n in step.items:
        r.num_computed += n
        bm.commit_full_blocks(r.request_id, r.tokens, r.num_computed)
        if r.num_computed == r.num_tokens:
            r.output.append(7)
            if len(r.output) >= r.params.max_tokens:
                s.finish(r, "length")


def run(s, bm, limit=200):
    steps = []
    while s.has_work():
        step = s.schedule()
        assert step.items, "no progress"
        assert step.num_tokens <= s.cfg.max_num_batched_tokens
        assert len(s.running) <= s.cfg.max_num_seqs
        steps.append([(r.request_id, n) for r, n in step.items])
        advance(s, bm, step)
        bm.check()
        assert len(steps) < limit
    bm.assert_no_leaks()
    return steps


def test_long_prompt_is_chunked_under_the_budget():
    s, bm = make(budget=16)
    s.add(req("a", 40))
    steps = run(s, bm)
    assert steps[:3] == [[("a", 16)], [("a", 16)], [("a", 8)]]
    assert steps[3:] == [[("a", 1)]] * 3


def test_decode_first_then_prefill_fills_the_rest():
    s, bm = make(budget=10)
    a, b = req("a", 3, max_tokens=6), req("b", 30, first=100)
    s.add(a)
    advance(s, bm, s.schedule())  # a prefilled, has its first token
    s.add(b)
    step = s.schedule()
    assert [(r.request_id, n) for r, n in step.items] == [("a", 1), ("b", 9)]
    run(s, bm)


def test_without_chunking_prompt_must_fit():
    s, bm = make(budget=8, chunked=False)
    with pytest.raises(EngineError, match="chunked prefill is off"):
        s.add(req("a", 9))
    s.add(req("b", 6))
    s.add(req("c", 6, first=50))
    assert [(r.request_id, n) for r, n in s.schedule().items] == [("b", 6)]


def test_max_num_seqs():
    s, bm = make(budget=64, max_seqs=2)
    for i in range(4):
        s.add(req(f"r{i}", 3, first=10 * i))
    assert len(s.schedule().items) == 2
    run(s, bm)


def test_prefix_hit_skips_cached_tokens():
    s, bm = make(budget=64)
    s.add(req("a", 10, max_tokens=1))
    run(s, bm)
    b = req("b", 10, max_tokens=1)
    b.prompt = list(range(8)) + [55, 56]
    s.add(b)
    step = s.schedule()
    assert step.items == [(b, 2)] and b.num_cached_tokens == 8
    advance(s, bm, step)
    run(s, bm)


def test_preemption_when_blocks_run_out_then_recompute():
    s, bm = make(budget=64, blocks=6, block_size=4)
    a, b = req("a", 8, max_tokens=8), req("b", 8, max_tokens=8, first=100)
    s.add(a)
    s.add(b)
    steps = run(s, bm)
    assert b.num_preemptions >= 1 and a.num_preemptions == 0
    assert a.status is Status.FINISHED and b.status is Status.FINISHED
    assert len(a.output) == 8 and len(b.output) == 8
    # after preemption b is recomputed (its prompt blocks come back from the prefix cache, its
    # generated tokens are recomputed in one chunk) rather than decoded one token at a time
    assert any(("b", n) in st for st in steps[1:] for n in range(2, 17))


def test_request_too_big_for_the_cache():
    s, bm = make(blocks=2, block_size=4)
    with pytest.raises(EngineError, match="needs 3 cache blocks, the cache has 2"):
        s.add(req("a", 8, max_tokens=1))
