"""Graph mode (runtime/graph.py) against eager on the tiny preset, the bounded compile count, the host step.

One pair of engines (eager and graph, same geometry) is built per module: compiling costs about a second
per token bucket here, so tests share the compiled graph engine and run their requests one after another.
"""

import pytest

pytestmark = pytest.mark.runtime
np = pytest.importorskip("numpy")
pytest.importorskip("mindspore")

from runtime import kernels as K  # noqa: E402
from runtime.config import PRESETS  # noqa: E402
from runtime.engine import (  # noqa: E402
    PHASES,
    EngineConfig,
    LLMEngine,
    build_model,
    eager_batch,
    prepare_inputs,
)
from runtime.errors import EngineError  # noqa: E402
from runtime.graph import GRAPH_LOGITS_TOLERANCE  # noqa: E402
from runtime.sampling import SamplingParams, sample_row  # noqa: E402
from runtime.sampling_ops import DeviceSampler  # noqa: E402
from runtime.scheduler import SchedulerConfig  # noqa: E402
from runtime.weights import random_tensors  # noqa: E402

TINY = PRESETS["tiny"]
BUCKETS = (4, 24)


def config(mode: str) -> EngineConfig:
    return EngineConfig(block_size=8, num_blocks=14, scheduler=SchedulerConfig(24, 4), mode=mode,
                        max_model_len=64, token_buckets=BUCKETS)


class Recorder:
    """Wraps an engine's sampler and keeps each step's sampled logits (host copies)."""

    def __init__(self, sampler):
        self.sampler, self.logits = sampler, []

    def __call__(self, logits, params, rngs):
        self.logits.append(K.to_host(logits)[: len(params)])
        return self.sampler(logits, params, rngs)


@pytest.fixture(scope="module")
def engines():
    w = random_tensors(TINY, 0, include_mtp=False)
    out = {}
    for mode in ("eager", "graph"):
        ec = config(mode)
        eng = LLMEngine(build_model(TINY, w, ec), ec)
        eng.compile_graphs()
        eng.sampler = Recorder(eng.sampler)
        out[mode] = eng
    return out


def lockstep(engines, requests, arrivals=()):
    """Run the same requests through both engines step by step; (tokens per engine, steps, logits pairs)."""
    for eng in engines.values():
        eng.sampler.logits.clear()
        for rid, prompt, params in requests:
            eng.add_request(rid, prompt, params)
    steps = {m: [] for m in engines}
    n = 0
    while any(e.has_unfinished() for e in engines.values()):
        for rid, prompt, params, at in arrivals:
            if at == n:
                for eng in engines.values():
                    eng.add_request(rid, prompt, params)
        for mode, eng in engines.items():
            steps[mode].append(eng.step())
        n += 1
        assert n < 200
    for eng in engines.values():
        eng.blocks.assert_no_leaks()
    tokens = {m: [o.tokens for o in s] for m, s in steps.items()}
    return tokens, steps, list(zip(engines["eager"].sampler.logits, engines["graph"].sampler.logits, strict=True))


def prompts(seed, lengths):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, TINY.vocab_size, n)] for n in lengths]


def test_graph_matches_eager_tokens_and_logits(engines):
    p = prompts(5, (5, 30, 17))
    requests = [(f"g{i}", q, SamplingParams(max_tokens=6)) for i, q in enumerate(p)]
    late = [("g3", p[1][:20] + [7, 8], SamplingParams(max_tokens=5), 2)]  # shares two full blocks with g1
    tokens, steps, logits = lockstep(engines, requests, late)
    assert tokens["graph"] == tokens["eager"]
    assert any(o.metrics.prefill_tokens and o.metrics.decode_tokens for o in steps["graph"]), "no mixed step"
    assert engines["graph"].requests["g3"].num_cached_tokens == 16
    worst = max(float(np.abs(g - e).max() / np.abs(e).max()) for e, g in logits)
    assert worst < GRAPH_LOGITS_TOLERANCE, worst


def test_graph_matches_eager_when_sampling_and_preempting(engines):
    requests = [
        (f"s{i}", q, SamplingParams(temperature=0.8, top_k=30 * (i % 2), top_p=0.9 if i % 3 else 1.0, max_tokens=8,
                                    seed=70 + i))
        for i, q in enumerate(prompts(6, (20, 25, 30, 35, 28, 22)))
    ]
    tokens, steps, _ = lockstep(engines, requests)
    assert tokens["graph"] == tokens["eager"]
    assert sum(o.metrics.preempted for o in steps["graph"]) > 0, "14 blocks should force preemption"


def test_compiles_once_per_bucket_and_never_in_steps(engines):
    g = engines["graph"]
    assert g.graphs_compiled == len(BUCKETS) + 1  # and the sampler's
    assert sorted(shape[0][0] for shape in g.graph.stats.shapes if len(shape) == 6) == list(BUCKETS)
    assert all(s > 0 for s in g.graph.stats.seconds)
    # requests of every length from 1 to the full budget, in steps of every token count
    requests = [(f"c{i}", q, SamplingParams(max_tokens=2)) for i, q in enumerate(prompts(7, (1, 3, 24, 9, 40)))]
    _, steps, _ = lockstep(engines, requests)
    assert g.graphs_compiled == len(BUCKETS) + 1
    assert all(o.metrics.compiled == 0 for o in steps["graph"])
    assert {o.metrics.dispatches for o in steps["graph"] if o.metrics.generated} <= {2}  # graph + greedy argmax
    for o in steps["graph"]:
        assert set(o.metrics.phases) == set(PHASES) and o.metrics.process_s >= 0


def test_graph_settings_are_checked(engines):
    with pytest.raises(EngineError, match="engine mode must be one of eager, graph"):
        EngineConfig(mode="static")
    with pytest.raises(EngineError, match="largest token bucket"):
        EngineConfig(mode="graph", token_buckets=(8, 16), scheduler=SchedulerConfig(64, 8))
    with pytest.raises(EngineError, match="max_model_len must be in 1..1024"):
        EngineConfig(max_model_len=2048)
    with pytest.raises(EngineError, match="jit_level"):
        EngineConfig(jit_level="O3")
    assert EngineConfig(mode="graph", scheduler=SchedulerConfig(48, 8)).buckets == (8, 48)
    with pytest.raises(EngineError, match="exceeds the engine's max_model_len"):
        engines["graph"].add_request("long", [1] * 60, SamplingParams(max_tokens=8))
    w = random_tensors(TINY, 0, include_mtp=False)
    with pytest.raises(EngineError, match="graph mode needs the GraphModel"):
        LLMEngine(build_model(TINY, w, config("eager")), config("graph"))


def test_prepare_inputs_pads_to_the_bucket(engines):
    eng = engines["eager"]
    a = eng.add_request("pa", list(range(20)), SamplingParams(max_tokens=1))
    b = eng.add_request("pb", list(range(5)), SamplingParams(max_tokens=1))
    sched = eng.scheduler.schedule()
    assert [n for _, n in sched.items] == [20, 4]  # budget 24: b's prompt is chunked
    s = prepare_inputs(sched, eng.blocks)
    assert s.query_start_loc.tolist() == [0, 20, 24] and s.seq_lens.tolist() == [20, 4]
    assert s.positions.tolist() == list(range(20)) + list(range(4)) and s.sample_index.tolist() == [19]
    held = eng.blocks.blocks_of("pa")
    assert s.slot_mapping[9] == held[1] * 8 + 1
    p = prepare_inputs(sched, eng.blocks, width=8, pad_block=14, tokens=32, requests=4)
    assert p.input_ids.shape == (32,) and p.block_tables.shape == (4, 8) and p.sample_index.shape == (4,)
    assert p.query_start_loc.tolist() == [0, 20, 24, 24, 24]
    assert (p.slot_mapping[24:] == 14 * 8).all() and (p.block_tables[2:] == 14).all()
    batch = eager_batch(s, 8)
    assert batch.max_query == 20 and batch.max_context == 20 and batch.mask.shape == (2, 20, 1, 20)
    assert batch.output_index.tolist() == list(range(20)) + list(range(20, 24))
    for req in (a, b):
        eng.abort(req.request_id)
    eng.blocks.assert_no_leaks()


def test_graph_model_matches_eager_on_the_other_config_paths():
    # one compile covering what the tiny preset does not: plain q_proj, tied embeddings, every layer MoE
    # without renormalisation, two shared experts, non-interleaved default RoPE
    from runtime.config import parse_config
    from runtime.graph import GraphModel, GraphRunner
    from runtime.model import DeepseekV3Model, contiguous_batch

    cfg = parse_config({**TINY.to_hf_dict("parameters"), "q_lora_rank": None, "tie_word_embeddings": True,
                        "first_k_dense_replace": 0, "norm_topk_prob": False, "n_shared_experts": 2,
                        "rope_interleave": False, "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}})
    w = random_tensors(cfg, 4, include_mtp=False)
    tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, 13).astype(np.int32)
    eager = K.to_host(DeepseekV3Model(cfg, w, 32).forward(contiguous_batch(tokens, 0)))
    run = GraphRunner(GraphModel(cfg, w, num_blocks=2, block_size=8, max_blocks_per_seq=2))
    pad = 16  # the scratch slot: block 2
    ids, pos, slots = np.zeros(16, np.int32), np.zeros(16, np.int32), np.full(16, pad, np.int32)
    ids[:13], pos[:13], slots[:13] = tokens, np.arange(13), np.arange(13)
    arrays = (ids, pos, slots, np.array([[0, 1]], np.int32), np.array([0, 13], np.int32), np.arange(13, dtype=np.int32))
    got = K.to_host(run(*(K.from_numpy(a) for a in arrays)))
    assert float(np.abs(got - eager).max() / np.abs(eager).max()) < GRAPH_LOGITS_TOLERANCE
    assert run.stats.count == 1


@pytest.mark.parametrize("compiled", [False, True], ids=["ops", "graph"])
def test_device_sampler_follows_sample_row(compiled):
    from runtime.graph import GraphRunner

    K.configure()
    rng = np.random.default_rng(11)
    sampler = DeviceSampler(compile=GraphRunner if compiled else None)
    for trial in range(6):
        logits = (rng.standard_normal((7, 512)) * (0.1 if trial % 2 else 3.0)).astype(np.float32)
        params = [
            SamplingParams(temperature=float(rng.choice([0.0, 0.7, 1.0])), top_k=int(rng.choice([0, 1, 20, 600])),
                           top_p=float(rng.choice([1.0, 0.9, 0.5])))
            for _ in range(6)
        ]
        seeds = [int(rng.integers(1 << 30)) for _ in params]
        want = [sample_row(logits[i], p, np.random.default_rng(seeds[i])) for i, p in enumerate(params)]
        rngs = [None if p.greedy else np.random.default_rng(s) for p, s in zip(params, seeds, strict=True)]
        assert sampler(K.to_device(logits), params, rngs) == want  # the 7th row is padding
