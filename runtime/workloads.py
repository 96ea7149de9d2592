"""Named, versioned host-dispatch workloads: the inputs hostpgo trains PGO on and benchmarks.

Command line (any Python 3.11 with mindspore==2.10.0, numpy<2, safetensors and hostpgo installed)::

    python -m runtime workload --list
    python -m runtime workload NAME [--checkpoint DIR | --preset tiny|small] [--steps N] [--seed N] [--json]
    python -m runtime.workload NAME ...    # the same

Without --checkpoint the built-in preset (tiny unless --preset) is generated once into
`$HOSTPGO_HOME/runtime/checkpoints/` (default `.hostpgo/` under the current directory).

In-process API (pyperf benchmarks)::

    from runtime.workloads import open_workload
    wl = open_workload("decode-b8", checkpoint=None, seed=0)  # load, build, warm up: not timed
    r = wl.run_steps(n)       # n engine steps; dict with at least tokens, dispatches, digest
    d = wl.dispatch_loop(n)   # n single-operator dispatches of a small add; dict with dispatches
    rec = wl.record(r)        # the JSON record the command line prints

`run_steps(n)` may be called any number of times with any n: each workload keeps its request
stream going deterministically (a finished request is replaced by the next one in its stream), so
the token digest of a fresh `open_workload(...).run_steps(n)` depends only on the checkpoint, the
workload version, the seed and n. For `decode-b1`/`decode-b8` every step is one decode token for
each of the 1/8 requests: a finished request is restarted with the same prompt, whose full blocks
are still in the prefix cache, so its restart step computes a single token too.

The record (`schema` "hostpgo.runtime.workload/2") holds name, version, seed, steps, checkpoint
digest, `token_digest` (sha256 over every generated "request:token"), `tokens` (tokens the model
processed: prompt chunks plus decode tokens), `generated_tokens`, wall and host (calling thread
CPU) time per token, dispatches per token and per step, tokens/s, mean TTFT/TPOT and prefix-cache
hits, and `executor`: for ray-decode (the Ray executor, runtime/ray_executor.py) the round trip of
the remote calls per step beside each stage actor's own compute. `Workload.close()` (or
`shutdown()`) stops the Ray executor's actors and cluster; ray-decode needs `pip install ray==2.60.0`. `host_path`
names the host hot path that ran ("cython" or "python", runtime/hostpath.py) and `host_path_reason` why;
`kernel_level` the instruction-set level MindSpore's CPU kernels select here (`kernel_level()`), which the W8A8
workloads' digests are pinned per. Versions
change whenever a workload's requests or engine settings change, so the digests pinned in
tests/unit/test_runtime_workloads.py move together with them.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from runtime.engine import EngineConfig, LLMEngine, RunSummary
from runtime.errors import WorkloadError
from runtime.sampling import SamplingParams
from runtime.scheduler import SchedulerConfig, Status

RECORD_SCHEMA = "hostpgo.runtime.workload/2"


class Driver:
    """Feeds one workload's request stream into an engine; subclasses define the stream."""

    warmup_steps = 1

    def __init__(self, vocab_size: int, seed: int):
        self.vocab = vocab_size
        self.seed = seed
        self.count = 0

    def rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def tokens(self, n: int, *key: int) -> list[int]:
        return [int(t) for t in self.rng(*key).integers(0, self.vocab, n)]

    def start(self, engine: LLMEngine) -> None:
        """Add the first requests (before warm-up)."""

    def before_step(self, engine: LLMEngine, step: int) -> None:
        """Arrivals and restarts due before engine step number `step`."""

    @staticmethod
    def finished(engine: LLMEngine, request_id: str) -> bool:
        """Whether a request is done; one the engine already forgot (long runs drop finished ones) is."""
        req = engine.requests.get(request_id)
        return req is None or req.status is Status.FINISHED


class DecodeDriver(Driver):
    """B requests decoding together; each restarts (same prompt, prefix-cached) when it finishes."""

    warmup_steps = 2
    prompt_len = 33  # two full blocks + 1: a restart recomputes one token

    def __init__(self, vocab_size: int, seed: int, batch: int):
        super().__init__(vocab_size, seed)
        self.batch = batch
        self.prompts = [self.tokens(self.prompt_len, 1, s) for s in range(batch)]
        self.generation = [0] * batch
        self.live: dict[int, str] = {}

    def _add(self, engine: LLMEngine, s: int) -> None:
        rid = f"s{s}g{self.generation[s]}"
        self.generation[s] += 1
        engine.add_request(rid, self.prompts[s], SamplingParams(max_tokens=40 + 4 * (s % 4)))
        self.live[s] = rid

    def start(self, engine: LLMEngine) -> None:
        for s in range(self.batch):
            self._add(engine, s)

    def before_step(self, engine: LLMEngine, step: int) -> None:
        for s in range(self.batch):
            if self.finished(engine, self.live[s]):
                self._add(engine, s)


class PrefillDriver(Driver):
    """Pairs of long fresh prompts (no prefix hits) that produce one token each, chunked by the budget."""

    lengths = (192, 160)

    def __init__(self, vocab_size: int, seed: int):
        super().__init__(vocab_size, seed)
        self.live: list[str] = []

    def _add_pair(self, engine: LLMEngine) -> None:
        self.live = []
        for n in self.lengths:
            rid = f"p{self.count}"
            engine.add_request(rid, self.tokens(n, 2, self.count), SamplingParams(max_tokens=1))
            self.live.append(rid)
            self.count += 1

    def start(self, engine: LLMEngine) -> None:
        self._add_pair(engine)

    def before_step(self, engine: LLMEngine, step: int) -> None:
        if all(self.finished(engine, r) for r in self.live):
            self._add_pair(engine)


class ServeMixedDriver(Driver):
    """Poisson arrivals sharing three system prompts, mixed sampling settings and lengths."""

    warmup_steps = 2
    max_waiting = 8

    def __init__(self, vocab_size: int, seed: int):
        super().__init__(vocab_size, seed)
        self.system = [self.tokens(n, 3, k) for k, n in enumerate((32, 48, 20))]
        self.arrivals = self.rng(4)

    def _add(self, engine: LLMEngine) -> None:
        i = self.count
        self.count += 1
        r = self.rng(5, i)
        prompt = self.system[int(r.integers(0, 3))] + self.tokens(int(r.integers(3, 41)), 6, i)
        temperature = float(r.choice([0.0, 0.7, 1.0]))
        params = SamplingParams(
            temperature=temperature,
            top_k=int(r.choice([0, 20, 50])),
            top_p=float(r.choice([1.0, 0.9, 0.8])),
            seed=None if i % 5 == 0 else 1000 + i,
            max_tokens=int(r.integers(4, 33)),
            stop_token_ids=tuple(int(t) for t in r.integers(0, self.vocab, 8)) if i % 3 == 0 else (),
        )
        engine.add_request(f"m{i}", prompt, params)

    def start(self, engine: LLMEngine) -> None:
        for _ in range(3):
            self._add(engine)

    def before_step(self, engine: LLMEngine, step: int) -> None:
        for _ in range(int(self.arrivals.poisson(0.6))):
            if len(engine.scheduler.waiting) < self.max_waiting:
                self._add(engine)


class PrefixHitDriver(Driver):
    """Four requests in flight, each a 96-token shared prefix plus 5 own tokens, short greedy answers."""

    warmup_steps = 2
    in_flight = 4

    def __init__(self, vocab_size: int, seed: int):
        super().__init__(vocab_size, seed)
        self.prefix = self.tokens(96, 7)

    def _add(self, engine: LLMEngine) -> None:
        i = self.count
        self.count += 1
        engine.add_request(f"h{i}", self.prefix + self.tokens(5, 8, i), SamplingParams(max_tokens=4))

    def start(self, engine: LLMEngine) -> None:
        self._add(engine)

    def before_step(self, engine: LLMEngine, step: int) -> None:
        while len(engine.scheduler.waiting) + len(engine.scheduler.running) < self.in_flight:
            self._add(engine)


class OffloadDriver(Driver):
    """Requests over six 48-token documents in turn, more than the device cache keeps: prefixes return from the host."""

    warmup_steps = 2
    in_flight = 2
    documents = 6

    def __init__(self, vocab_size: int, seed: int):
        super().__init__(vocab_size, seed)
        self.docs = [self.tokens(48, 9, k) for k in range(self.documents)]

    def _add(self, engine: LLMEngine) -> None:
        i = self.count
        self.count += 1
        prompt = self.docs[i % self.documents] + self.tokens(4, 10, i)
        engine.add_request(f"o{i}", prompt, SamplingParams(max_tokens=6))

    def start(self, engine: LLMEngine) -> None:
        self._add(engine)

    def before_step(self, engine: LLMEngine, step: int) -> None:
        while len(engine.scheduler.waiting) + len(engine.scheduler.running) < self.in_flight:
            self._add(engine)


@dataclass(frozen=True)
class WorkloadSpec:
    """One named workload: its version, default length, engine settings and request stream."""

    name: str
    version: int
    summary: str
    default_steps: int
    engine: EngineConfig
    driver: Callable[[int, int], Driver]
    golden: str | dict[str, str]
    """token_digest of the default run (built-in tiny preset, default steps, seed 0): one digest for every CPU,
    or, where MindSpore's CPU kernels compute differently per instruction set, one per kernel level
    (`kernel_level()`); a level without a digest is not pinned."""
    quant: str | None = None
    """Quantization scheme the workload runs (runtime/quant.py METHODS): its built-in checkpoint is the preset
    quantized into that layout, and a --checkpoint must be quantized the same way. None: any checkpoint."""

    def golden_for(self, level: str) -> str | None:
        """The pinned digest on a CPU of MindSpore kernel level `level`; None where that level is not pinned."""
        return self.golden.get(level) if isinstance(self.golden, dict) else self.golden

    @property
    def needs_ray(self) -> bool:
        """Whether the workload runs the Ray executor (Ray is an optional dependency: the `ray` extra)."""
        return self.engine.executor == "ray"

    @property
    def needs_compile(self) -> bool:
        """Whether opening the workload compiles graphs (graph mode: one per token bucket, during warm-up)."""
        return self.engine.mode == "graph"

    def describe(self) -> str:
        """One line of `workload --list`: name, version, default steps, summary, and the graphs it compiles."""
        line = f"{self.name:18s} v{self.version}  {self.default_steps:3d} steps  {self.summary}"
        if self.needs_compile:
            buckets = self.engine.buckets
            line += (
                f"  [compiles {len(buckets) + 1} graphs in warm-up: "
                f"token buckets {', '.join(map(str, buckets))} and the sampler]"
            )
        if self.needs_ray:
            from runtime.ray_executor import RAY_REQUIREMENT

            line += f"  [needs Ray: pip install {RAY_REQUIREMENT}; starts a local cluster]"
        return line


def kernel_level(cpuinfo: Path = Path("/proc/cpuinfo"), machine: str | None = None) -> str:
    """The instruction-set level MindSpore's CPU kernels (nnacl) select on this machine, from the CPU's flags:
    `avx512` (avx512f), `avx2`, `sse4_1` or `generic` on x86_64; the machine name (e.g. `aarch64`) elsewhere.
    The quantized workloads' int8 arithmetic gives different tokens at different levels."""
    import platform

    machine = machine or platform.machine()
    if machine != "x86_64":
        return machine
    flags: set[str] = set()
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
                break
    except OSError:
        pass
    for flag, level in (("avx512f", "avx512"), ("avx2", "avx2"), ("sse4_1", "sse4_1")):
        if flag in flags:
            return level
    return "generic"


# The W8A8 workloads' digests per kernel level, each pinned from a run of the stock stack on such a CPU: avx512 on
# the AMD EPYC development VM with AVX-512 (until 2026-12-01), avx2 on an AMD EPYC VM with AVX2 and no AVX-512
# (2026-12-02). The float and A16W4 workloads gave the same digests on both.
_W8A8_GOLDEN = {
    "avx512": "549c85359b0050302b2621046f20df74018388628be8b7b2bb1debac81bfff0e",
    "avx2": "8969e840036ca74142bfdd64d4b24851b2f6772312188a1b56887a257e34d22a",
}


def _engine(block_size: int, num_blocks: int, budget: int, max_seqs: int, **graph) -> EngineConfig:
    """An engine config; `graph` passes further EngineConfig fields (mode, max_model_len, host_blocks)."""
    return EngineConfig(
        block_size=block_size,
        num_blocks=num_blocks,
        scheduler=SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=max_seqs),
        **graph,
    )


def _ray() -> dict:
    """The Ray executor with its defaults: two pipeline stages (the tiny preset's 3 layers as 0-1 and 2), 2 CPUs."""
    return {"executor": "ray"}


def _graph(max_model_len: int) -> dict:
    """Graph mode with the default buckets (max_num_seqs tokens, a full step's budget): two model graphs."""
    return {"mode": "graph", "max_model_len": max_model_len}


WORKLOADS: dict[str, WorkloadSpec] = {
    w.name: w
    for w in (
        WorkloadSpec(
            "decode-b1",
            1,
            "one request decoding greedily, restarted from its cached prompt",
            48,
            _engine(16, 16, 64, 1),
            lambda v, s: DecodeDriver(v, s, 1),
            "bf0e1698978d621f1e616e758b261a532a266dd48891a39c440e9cb659e4df3a",
        ),
        WorkloadSpec(
            "decode-b8",
            1,
            "eight requests decoding together, restarts keep the batch at eight",
            32,
            _engine(16, 64, 512, 8),
            lambda v, s: DecodeDriver(v, s, 8),
            "aeddfe7a7e338be551f1496cce47e3c1fdaef5c8daa5a4adca11e1a9cd3d47b4",
        ),
        WorkloadSpec(
            "prefill",
            1,
            "long fresh prompts (192, 160 tokens) chunked by a 64-token budget, one token each",
            24,
            _engine(16, 40, 64, 4),
            PrefillDriver,
            "27f417b373d61a1147b10d79e19e2155764b06e419ffdecf7e7a652741413093",
        ),
        WorkloadSpec(
            "serve-mixed",
            1,
            "Poisson arrivals over shared system prompts, sampling, prefill and decode mixed",
            48,
            _engine(16, 20, 48, 8),
            ServeMixedDriver,
            "0c622a949477030839ec5c992932cdbe1dace23278a060239ed63da57e5ae9c8",
        ),
        WorkloadSpec(
            "prefix-hit",
            1,
            "requests sharing a 96-token prefix: prompts served from the prefix cache",
            40,
            _engine(16, 48, 64, 4),
            PrefixHitDriver,
            "59e843e0d3274a82e1140e8cfebf0628a75a3fcedf1cf80538c1a574dbf61e41",
        ),
        # Graph mode (runtime/graph.py): the request streams and cache geometry of their eager namesakes, each
        # step one launch of a graph compiled in warm-up. Requests are at most 33 + 52 (decode) or 48 + 40 + 32
        # (serve-mixed) tokens long, hence max_model_len. Their digests, pinned from runs, equal the eager ones
        # on the tiny preset: in-graph routing and per-token attention change logits only in the last bits.
        WorkloadSpec(
            "decode-b1-graph",
            1,
            "decode-b1's requests, each step one launch of a compiled graph",
            48,
            _engine(16, 16, 64, 1, **_graph(96)),
            lambda v, s: DecodeDriver(v, s, 1),
            "bf0e1698978d621f1e616e758b261a532a266dd48891a39c440e9cb659e4df3a",
        ),
        WorkloadSpec(
            "decode-b8-graph",
            1,
            "decode-b8's requests, each step one launch of a compiled graph",
            32,
            _engine(16, 64, 512, 8, **_graph(96)),
            lambda v, s: DecodeDriver(v, s, 8),
            "aeddfe7a7e338be551f1496cce47e3c1fdaef5c8daa5a4adca11e1a9cd3d47b4",
        ),
        WorkloadSpec(
            "serve-mixed-graph",
            1,
            "serve-mixed's requests, each step one launch of a compiled graph",
            48,
            _engine(16, 20, 48, 8, **_graph(128)),
            ServeMixedDriver,
            "0c622a949477030839ec5c992932cdbe1dace23278a060239ed63da57e5ae9c8",
        ),
        # Quantized weights (runtime/quant.py, runtime/quant_linear.py): decode-b8's requests and cache over the
        # tiny preset quantized by `checkpoint --quant`; every quantized linear quantizes, multiplies and rescales
        # with MindSpore ops on each call. Eager only: GraphModel runs float weights.
        WorkloadSpec(
            "decode-b8-w8a8",
            1,
            "decode-b8's requests on W8A8 weights (golden-stick layout: static per-tensor, per-token in MoE experts)",
            32,
            _engine(16, 64, 512, 8),
            lambda v, s: DecodeDriver(v, s, 8),
            _W8A8_GOLDEN,
            quant="w8a8",
        ),
        WorkloadSpec(
            "decode-b8-a16w4",
            1,
            "decode-b8's requests on A16W4 weights (GPTQ layout, group 64, unpacked and dequantized per call)",
            32,
            _engine(16, 64, 512, 8),
            lambda v, s: DecodeDriver(v, s, 8),
            "52b660eeab42a75890b5fdc57f5622fd06d7a64bf1803c0b5015a3034b03bd42",
            quant="a16w4",
        ),
        # The quantized decode-b8 variants in graph mode: the quantized arithmetic compiled into the step's graph
        # (runtime/quant_graph.py), routed experts stacked as GraphModel runs them. Digests pinned from runs; on the
        # tiny preset they equal their eager namesakes'.
        WorkloadSpec(
            "decode-b8-w8a8-graph",
            1,
            "decode-b8-w8a8's requests, each step one launch of a compiled graph",
            32,
            _engine(16, 64, 512, 8, **_graph(96)),
            lambda v, s: DecodeDriver(v, s, 8),
            _W8A8_GOLDEN,
            quant="w8a8",
        ),
        WorkloadSpec(
            "decode-b8-a16w4-graph",
            1,
            "decode-b8-a16w4's requests, each step one launch of a compiled graph",
            32,
            _engine(16, 64, 512, 8, **_graph(96)),
            lambda v, s: DecodeDriver(v, s, 8),
            "52b660eeab42a75890b5fdc57f5622fd06d7a64bf1803c0b5015a3034b03bd42",
            quant="a16w4",
        ),
        # KV-cache offload: six documents of three full blocks each cycle through a 12-block device cache, so each
        # document's blocks are evicted before it comes back; evicted blocks move to 32 host slots and return on
        # the prefix hit instead of being recomputed.
        WorkloadSpec(
            "serve-offload",
            1,
            "requests over six shared 48-token documents in turn; a 12-block device cache offloads evicted "
            "prefix blocks to 32 host slots and swaps them back on a prefix hit",
            40,
            _engine(16, 12, 64, 4, host_blocks=32),
            OffloadDriver,
            "cc7f51a36832c923020308d08eef60c0c290c5146fd8e4de3a18bff96d30091c",
        ),
        # The Ray executor (runtime/ray_executor.py): decode-b8's requests and cache geometry, the layers split into
        # two pipeline stages on Ray actors. Its digest, pinned from a run, equals decode-b8's: the stages run the
        # local model's operators on the same floats.
        WorkloadSpec(
            "ray-decode",
            1,
            "decode-b8's requests, the model split into two pipeline stages on Ray actors",
            32,
            _engine(16, 64, 512, 8, **_ray()),
            lambda v, s: DecodeDriver(v, s, 8),
            "aeddfe7a7e338be551f1496cce47e3c1fdaef5c8daa5a4adca11e1a9cd3d47b4",
        ),
    )
}


def get_spec(name: str) -> WorkloadSpec:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise WorkloadError(f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})") from None


class Workload:
    """An opened workload: engine built and warmed up, ready for timed `run_steps` calls."""

    def __init__(self, spec: WorkloadSpec, checkpoint: Path, seed: int, preset: str | None):
        from runtime import kernels as K
        from runtime.config import load_config
        from runtime.engine import build_model
        from runtime.weights import checkpoint_digest, load_weights

        self.spec = spec
        self.seed = seed
        self.checkpoint = checkpoint
        self.preset = preset
        self.cfg = load_config(checkpoint)
        if spec.quant is not None and (self.cfg.quant is None or self.cfg.quant.method != spec.quant):
            have = "float" if self.cfg.quant is None else self.cfg.quant.method
            raise WorkloadError(
                f"workload {spec.name} runs {spec.quant} weights, but {checkpoint} holds {have} weights "
                f"(write one with `python -m runtime checkpoint --quant {spec.quant}`)"
            )
        weights, self.load_report = load_weights(checkpoint, self.cfg)
        self.checkpoint_digest = checkpoint_digest(checkpoint)
        ec = replace(spec.engine, seed=seed)
        self.model = build_model(self.cfg, weights, ec)
        try:
            self.engine = LLMEngine(self.model, ec)
            self.engine.compile_graphs()  # graph mode: every bucket now, so that no timed step compiles
            self.driver = spec.driver(self.cfg.vocab_size, seed)
            self.driver.start(self.engine)
            for _ in range(self.driver.warmup_steps):
                self._step()
        except BaseException:
            self.shutdown()
            raise
        self._k = K
        self._a = K.to_device(np.ones((1, self.cfg.hidden_size), np.float32))
        self._b = K.to_device(np.full((1, self.cfg.hidden_size), 0.5, np.float32))
        self.dispatch_loop(16)
        K.host_application().after_warmup()  # gc.freeze() here when the host settings ask for it

    def _step(self):
        self.driver.before_step(self.engine, self.engine.step_count)
        out = self.engine.step()
        if self.engine.step_count % 64 == 0:  # bounded memory however long a benchmark runs
            self.engine.forget_finished()
            del self.engine.history[:-1024]
        return out

    def run_steps(self, n: int) -> dict:
        """Run n engine steps; returns tokens, generated_tokens, dispatches, wall/host time, digest."""
        if n < 0:
            raise WorkloadError(f"{self.spec.name}: cannot run {n} steps")
        h = hashlib.sha256()
        metrics = []
        t0 = time.perf_counter()
        for _ in range(n):
            out = self._step()
            metrics.append(out.metrics)
            for rid, tok in out.tokens:
                h.update(f"{rid}:{tok}\n".encode())
        wall = time.perf_counter() - t0
        s = RunSummary.of(metrics)
        finished = [r for r in self.engine.requests.values() if r.status is Status.FINISHED]
        ttft = [r.ttft for r in finished if r.ttft is not None]
        tpot = [r.tpot for r in finished if r.tpot is not None]
        return {
            "steps": n,
            "tokens": s.tokens,
            "generated_tokens": s.generated,
            "dispatches": s.dispatches,
            "transfers": s.transfers,
            "wall_s": wall,
            "host_s": s.host_s,
            "process_s": s.process_s,
            "phases": {name: tuple(v) for name, v in s.phases.items()},
            "executed": s.executed,
            "round_trip_s": s.round_trip_s,
            "stage_wall_s": list(s.stage_wall_s),
            "stage_thread_s": list(s.stage_thread_s),
            "stage_dispatches": list(s.stage_dispatches),
            "compiled": s.compiled,
            "digest": h.hexdigest(),
            "ttft_ms_mean": 1e3 * float(np.mean(ttft)) if ttft else None,
            "tpot_ms_mean": 1e3 * float(np.mean(tpot)) if tpot else None,
            "preemptions": sum(m.preempted for m in metrics),
        }

    def dispatch_loop(self, n: int) -> dict:
        """n single-operator dispatches (an add of two [1, hidden] tensors), synchronised at the end."""
        K = self._k
        add, a, b = K.add, self._a, self._b
        d0 = K.dispatches()
        t0 = time.perf_counter()
        r = a
        for _ in range(n):
            r = add(a, b)
        K.to_host(r)
        return {"dispatches": K.dispatches() - d0, "wall_s": time.perf_counter() - t0}

    def drain(self, max_steps: int = 10000) -> None:
        """Stop new arrivals, finish every request, and check that no cache block leaked."""
        self.engine.run_to_completion(max_steps)
        self.engine.blocks.assert_no_leaks()

    def close(self) -> None:
        """Abort whatever is in flight, check that every cache block came back, and shut the executor down."""
        try:
            for rid in list(self.engine.requests):
                self.engine.abort(rid)
            self.engine.blocks.assert_no_leaks()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop what the executor started (the Ray executor's actors and cluster); nothing for the local one.
        Idempotent."""
        shutdown = getattr(self.model, "shutdown", None)
        if shutdown is not None:
            shutdown()

    def golden_applies(self, steps: int) -> bool:
        """Whether the pinned digest describes a run of `steps` steps of this workload."""
        return self.preset == "tiny" and self.seed == 0 and steps == self.spec.default_steps

    def record(self, run: dict) -> dict:
        """The versioned JSON record for one run_steps() result."""
        import mindspore

        level = kernel_level()
        golden = self.spec.golden_for(level) if self.golden_applies(run["steps"]) else None

        tokens = max(run["tokens"], 1)
        steps = max(run["steps"], 1)
        stats = self.engine.blocks.stats
        graph = self.engine.graph
        return {
            "schema": RECORD_SCHEMA,
            "name": self.spec.name,
            "version": self.spec.version,
            "seed": self.seed,
            "steps": run["steps"],
            "checkpoint": str(self.checkpoint),
            "checkpoint_digest": self.checkpoint_digest,
            "preset": self.preset,
            "token_digest": run["digest"],
            "golden_digest": golden,
            "golden_match": None if golden is None else golden == run["digest"],
            "kernel_level": level,
            "tokens": run["tokens"],
            "generated_tokens": run["generated_tokens"],
            "wall_s": run["wall_s"],
            "host_s": run["host_s"],
            "tokens_per_s": run["tokens"] / run["wall_s"] if run["wall_s"] else None,
            "wall_us_per_token": 1e6 * run["wall_s"] / tokens,
            "host_us_per_token": 1e6 * run["host_s"] / tokens,
            "dispatches": run["dispatches"],
            "dispatches_per_token": run["dispatches"] / tokens,
            "dispatches_per_step": run["dispatches"] / max(run["steps"], 1),
            "transfers_per_token": run["transfers"] / tokens,
            "host_us_per_step": 1e6 * run["host_s"] / steps,
            "mode": self.engine.cfg.mode,
            "quantization": None if self.cfg.quant is None else self.cfg.quant.method,
            "host_path": self.engine.host_path.name,
            "host_path_reason": self.engine.host_path.reason,
            "host_total_s": run["process_s"],
            "host_total_us_per_token": 1e6 * run["process_s"] / tokens,
            "host_runtime_threads_us_per_token": 1e6 * (run["process_s"] - run["host_s"]) / tokens,
            "host_total_us_per_step": 1e6 * run["process_s"] / steps,
            "phases_us_per_step": {
                name: {"wall": 1e6 * wall / steps, "thread": 1e6 * cpu / steps}
                for name, (wall, cpu) in run["phases"].items()
            },
            "graphs": None
            if graph is None
            else {
                "jit_level": graph.jit_level,
                "token_buckets": list(self.engine.cfg.buckets),
                "compiled": graph.stats.count,
                "compile_s": graph.stats.total_s,
                "compile_s_each": graph.stats.seconds,
                "compiled_in_steps": run["compiled"],
            },
            "executor": self._executor_record(run),
            "ttft_ms_mean": run["ttft_ms_mean"],
            "tpot_ms_mean": run["tpot_ms_mean"],
            "preemptions": run["preemptions"],
            "kv_offload": None
            if not self.engine.cfg.host_blocks
            else {
                "host_blocks": self.engine.cfg.host_blocks,
                "swaps_out": stats.swaps_out,
                "swaps_in": stats.swaps_in,
                "host_dropped": stats.host_dropped,
            },
            "prefix_cache_hit_tokens": stats.hit_tokens,
            "prefix_cache_queried_tokens": stats.queried_tokens,
            "python": sys.version.split()[0],
            "executable": sys.executable,
            "mindspore": mindspore.__version__,
            "numpy": np.__version__,
            "launch_blocking": self._k.launch_blocking(),
            "host_settings": self._k.host_application().record(),
        }


    def _executor_record(self, run: dict) -> dict | None:
        """The record's `executor`: None in graph mode; the executor's kind (and layout); for one that ran the forward
        pass elsewhere, the per-step round trip (driver wall time of the remote calls), each stage's own compute
        (wall and thread time, dispatches) and the difference (RPC, serialisation, scheduling)."""
        executor = self.engine.executor
        if executor is None:
            return None
        rec = executor.describe()
        n = run.get("executed", 0)
        if n:
            per = 1e6 / n
            rec.update(
                steps_executed=n,
                round_trip_us_per_step=per * run["round_trip_s"],
                stage_compute_us_per_step=[per * v for v in run["stage_wall_s"]],
                stage_thread_us_per_step=[per * v for v in run["stage_thread_s"]],
                stage_dispatches_per_step=[v / n for v in run["stage_dispatches"]],
                overhead_us_per_step=per * (run["round_trip_s"] - sum(run["stage_wall_s"])),
            )
        return rec


def open_workload(name: str, checkpoint: str | Path | None = None, seed: int = 0, preset: str = "tiny") -> Workload:
    """Build a workload ready to time: checkpoint loaded, engine warmed up.

    Without `checkpoint` the built-in `preset` ("tiny", whose digests are pinned, or "small") is
    generated once into the work area (checkpoint seed 0); `seed` drives the request stream.
    """
    from runtime.workarea import builtin_checkpoint

    spec = get_spec(name)
    if spec.needs_ray:
        from runtime.ray_executor import ray_unavailable

        message = ray_unavailable(f"workload {name}")
        if message:
            raise WorkloadError(message)
    if checkpoint is not None:
        return Workload(spec, Path(checkpoint), seed, None)
    return Workload(spec, builtin_checkpoint(preset, 0, quant=spec.quant), seed, preset)
