"""The serving engine: requests in, tokens out, one scheduled batch per `step()`.

`LLMEngine.step()` runs vLLM's host step in five timed phases: schedule (runtime/scheduler.py) ->
prepare (`prepare_inputs`: the step's metadata as NumPy arrays, positions, slot mapping, block
tables, query start locations, handed to MindSpore with `ms.from_numpy`) -> forward (the eager
model's operators one by one, or one launch of the compiled graph, runtime/graph.py) -> sample
(`DeviceSampler`: MindSpore ops, the sampled ids copied back) -> update (advance requests, publish
full blocks to the prefix cache, finish and free). In eager mode the forward phase is the executor's
(runtime/executor.py): the model in this process, or pipeline stages on Ray actors
(runtime/ray_executor.py), whose round trip each step records. Every step records wall time, the calling
thread's CPU time, the whole process's CPU time (the difference is MindSpore's runtime threads),
per-phase wall and thread time, operator dispatches and tokens; every request records TTFT and TPOT.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from runtime import hostpath
from runtime import kernels as K
from runtime.errors import EngineError
from runtime.executor import EXECUTORS, ExecuteTiming, Executor, LocalExecutor
from runtime.inputs import StepInputs, eager_batch, prepare_inputs  # noqa: F401 (re-exported: their old home)
from runtime.model import DeepseekV3Model
from runtime.ray_executor import RayExecutorConfig
from runtime.sampling import SamplingParams
from runtime.sampling_ops import DeviceSampler
from runtime.scheduler import Request, ScheduledStep, Scheduler, SchedulerConfig, Status

MODES = ("eager", "graph")
PHASES = ("schedule", "prepare", "forward", "sample", "update")


@dataclass(frozen=True)
class EngineConfig:
    """Cache geometry, batching limits, the execution mode and the engine's seed."""

    block_size: int = 16
    num_blocks: int = 64
    scheduler: SchedulerConfig = SchedulerConfig()
    enable_prefix_caching: bool = True
    seed: int = 0
    """Seeds requests that do not bring their own seed (in the order they are added)."""
    mode: str = "eager"
    """"eager": the model's operators dispatched one by one (PyNative); "graph": each step is one launch of a
    graph compiled with mindspore.jit (runtime/graph.py)."""
    max_model_len: int | None = None
    """Longest request (prompt + max_tokens) accepted; None: the whole cache. In graph mode it fixes the block
    table width, ceil(max_model_len / block_size) blocks, over which every token attends."""
    token_buckets: tuple[int, ...] = ()
    """Graph mode: the padded token counts, one compiled graph each (requests and sample rows are always padded to
    max_num_seqs); a step runs in the smallest bucket that holds its tokens. Empty: (max_num_seqs,
    max_num_batched_tokens), one graph for decode steps and one for prefill or mixed steps."""
    jit_level: str = "O0"
    """Graph mode: mindspore.jit's jit_level ("O0", as vLLM-MindSpore runs, or "O1")."""
    host_blocks: int = 0
    """KV-cache offload: host slots that evicted prefix-cache blocks move to (and come back from on a prefix hit);
    0 turns offload off. Eager mode only."""
    executor: str = "local"
    """Eager mode: where the forward pass runs: "local" (this process) or "ray" (pipeline stages on Ray actors of a
    local cluster, laid out by `ray`; runtime/ray_executor.py)."""
    ray: RayExecutorConfig = RayExecutorConfig()
    """The Ray executor's stages and cluster (used when executor is "ray")."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise EngineError(f"engine mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.executor not in EXECUTORS:
            raise EngineError(f"engine executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.executor != "local" and self.mode != "eager":
            raise EngineError(f"executor {self.executor!r} runs eager mode only, got mode {self.mode!r}")
        if self.jit_level not in ("O0", "O1"):
            raise EngineError(f"jit_level must be O0 or O1, got {self.jit_level!r}")
        if self.max_model_len is not None and not 0 < self.max_model_len <= self.num_blocks * self.block_size:
            raise EngineError(
                f"max_model_len must be in 1..{self.num_blocks * self.block_size} (the cache), got {self.max_model_len}"
            )
        if self.host_blocks < 0:
            raise EngineError(f"host_blocks must be >= 0, got {self.host_blocks}")
        if self.host_blocks and self.mode == "graph":
            raise EngineError("KV-cache offload (host_blocks) runs in eager mode only")
        if self.host_blocks and self.executor != "local":
            raise EngineError("KV-cache offload (host_blocks) needs the local executor: the Ray stages hold the "
                              "caches in their actors")
        if self.mode == "graph":
            buckets = self.buckets
            if buckets[0] < 1 or list(buckets) != sorted(set(buckets)):
                raise EngineError(f"token_buckets must be increasing positive counts, got {list(self.token_buckets)}")
            if buckets[-1] < self.scheduler.max_num_batched_tokens:
                raise EngineError(
                    f"the largest token bucket ({buckets[-1]}) must hold a full step "
                    f"(max_num_batched_tokens {self.scheduler.max_num_batched_tokens})"
                )

    @property
    def buckets(self) -> tuple[int, ...]:
        """The graph token buckets in effect."""
        sc = self.scheduler
        return self.token_buckets or tuple(sorted({sc.max_num_seqs, sc.max_num_batched_tokens}))

    @property
    def max_blocks_per_seq(self) -> int:
        return -(-(self.max_model_len or self.num_blocks * self.block_size) // self.block_size)


@dataclass
class StepMetrics:
    step: int
    wall_s: float
    host_s: float
    """CPU time of the thread that ran the step (where dispatch work lands with launch_blocking)."""
    dispatches: int
    transfers: int
    num_requests: int
    prefill_tokens: int
    decode_tokens: int
    generated: int
    preempted: int
    process_s: float = 0.0
    """CPU time of the whole process during the step: the calling thread plus MindSpore's runtime threads."""
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)
    """(wall seconds, calling-thread CPU seconds) per engine phase (PHASES)."""
    compiled: int = 0
    """Graphs compiled during this step (0 after warm-up)."""
    execute: ExecuteTiming | None = None
    """The forward pass's round trip when the executor ran it elsewhere (Ray actors); None in this process."""


@dataclass
class StepOutput:
    """Tokens produced by one step, in batch order, and which requests finished."""

    tokens: list[tuple[str, int]]
    finished: list[Request]
    metrics: StepMetrics


def build_model(cfg, weights: dict[str, np.ndarray], ec: EngineConfig):
    """The model an engine of config `ec` runs: DeepseekV3Model (eager), runtime.graph.GraphModel (graph), or a
    RayExecutor (executor "ray": the layers on actors of a local cluster; call its shutdown() when done)."""
    if ec.mode == "graph":
        from runtime.graph import GraphModel

        return GraphModel(cfg, weights, ec.num_blocks, ec.block_size, ec.max_blocks_per_seq)
    if ec.executor == "ray":
        from runtime.ray_executor import RayExecutor

        return RayExecutor(cfg, weights, ec.num_blocks * ec.block_size, ec.ray)
    return DeepseekV3Model(cfg, weights, ec.num_blocks * ec.block_size)


class _Phases:
    """Wall and calling-thread CPU time of consecutive phases."""

    def __init__(self):
        self.times: dict[str, tuple[float, float]] = {}
        self.t, self.c = time.perf_counter(), time.thread_time()

    def end(self, name: str) -> None:
        t, c = time.perf_counter(), time.thread_time()
        self.times[name] = (t - self.t, c - self.c)
        self.t, self.c = t, c


class LLMEngine:
    """Continuous-batching engine over one model: in eager mode a DeepseekV3Model (run by a LocalExecutor) or an
    Executor, in graph mode a GraphModel."""

    def __init__(self, model, cfg: EngineConfig = EngineConfig(), host_path: hostpath.HostPath | None = None):
        if model.num_slots < cfg.num_blocks * cfg.block_size:
            raise EngineError(
                f"model cache has {model.num_slots} slots, engine needs {cfg.num_blocks * cfg.block_size}"
            )
        self.model = model
        self.cfg = cfg
        self.host_path = host_path or hostpath.selected()
        """The host hot path's implementation (block manager, budget loop, input preparation): compiled or reference."""
        if cfg.host_blocks and self.host_path.name != "python":
            # The compiled block manager has no host tier: offload runs on the reference one (the record says so).
            self.host_path = hostpath.reference("KV-cache offload (host_blocks) runs on the reference block manager")
        hp = self.host_path
        if cfg.host_blocks:
            self.blocks = hp.block_manager(cfg.num_blocks, cfg.block_size, cfg.enable_prefix_caching, cfg.host_blocks)
        else:
            self.blocks = hp.block_manager(cfg.num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.host_cache = None
        if cfg.host_blocks:
            mc = model.cfg
            self.host_cache = np.zeros(
                (mc.num_hidden_layers, cfg.host_blocks, cfg.block_size, mc.latent_dim), np.float32
            )
        self.scheduler = Scheduler(cfg.scheduler, self.blocks, hp.schedule_step)
        self.requests: dict[str, Request] = {}
        self.seeds = np.random.SeedSequence(cfg.seed)
        self.step_count = 0
        self.history: list[StepMetrics] = []
        self.graph = None
        self.executor: Executor | None = None
        self.sampler = DeviceSampler()
        if cfg.mode == "eager":
            self.executor = model if isinstance(model, Executor) else LocalExecutor(model)
            if self.executor.kind != cfg.executor:
                raise EngineError(
                    f"engine executor {cfg.executor!r} needs the model build_model() makes for it, got a "
                    f"{self.executor.kind} executor"
                )
        if cfg.mode == "graph":
            from runtime.graph import GraphModel, GraphRunner

            if not isinstance(model, GraphModel) or model.max_blocks_per_seq != cfg.max_blocks_per_seq:
                raise EngineError("graph mode needs the GraphModel that build_model() makes for this engine config")
            self.graph = GraphRunner(model, cfg.jit_level)
            # the sampling graph's compiles are counted with the model's
            self.sampler = DeviceSampler(compile=lambda cell: GraphRunner(cell, cfg.jit_level, self.graph.stats))

    @property
    def graphs_compiled(self) -> int:
        return self.graph.stats.count if self.graph else 0

    def compile_graphs(self) -> None:
        """Graph mode: compile every token bucket now (warm-up), with padding-only inputs that touch no real block,
        and the sampling graph."""
        if self.graph is None:
            return
        r = self.cfg.scheduler.max_num_seqs
        pad, bs = self.model.scratch_block, self.cfg.block_size
        for t in self.cfg.buckets:
            arrays = (
                np.zeros(t, np.int32),
                np.zeros(t, np.int32),
                np.full(t, pad * bs, np.int32),
                np.full((r, self.cfg.max_blocks_per_seq), pad, np.int32),
                np.zeros(r + 1, np.int32),
                np.zeros(r, np.int32),
            )
            self.graph(*(K.from_numpy(a) for a in arrays))
        self.sampler.warm_up(r, self.model.cfg.vocab_size)

    def add_request(self, request_id: str, prompt: list[int], params: SamplingParams | None = None) -> Request:
        mc = self.model.cfg
        params = params or SamplingParams()
        if request_id in self.requests and self.requests[request_id].status is not Status.FINISHED:
            raise EngineError(f"request id {request_id!r} is already in flight")
        if not prompt:
            raise EngineError(f"request {request_id}: empty prompt")
        bad = [t for t in prompt if not 0 <= t < mc.vocab_size]
        if bad:
            raise EngineError(
                f"request {request_id}: token id {bad[0]} outside the vocabulary (0..{mc.vocab_size - 1})"
            )
        if len(prompt) + params.max_tokens > mc.max_position_embeddings:
            raise EngineError(
                f"request {request_id}: prompt ({len(prompt)}) + max_tokens ({params.max_tokens}) exceeds "
                f"max_position_embeddings ({mc.max_position_embeddings})"
            )
        if self.cfg.max_model_len is not None and len(prompt) + params.max_tokens > self.cfg.max_model_len:
            raise EngineError(
                f"request {request_id}: prompt ({len(prompt)}) + max_tokens ({params.max_tokens}) exceeds "
                f"the engine's max_model_len ({self.cfg.max_model_len})"
            )
        rng = None
        if not params.greedy:
            seed = params.seed if params.seed is not None else self.seeds.spawn(1)[0]
            rng = np.random.default_rng(seed)
        req = Request(request_id, list(prompt), params, rng=rng, arrival_time=time.perf_counter())
        self.scheduler.add(req)
        self.requests[request_id] = req
        return req

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    def _forward(self, sched: ScheduledStep, clock: _Phases):
        """prepare + forward phases: the logits tensor of the sampling rows (graph mode: padded rows too)."""
        if self.graph is None:
            hp = self.host_path
            batch = hp.eager_batch(hp.prepare_inputs(sched, self.blocks), self.blocks.block_size)
            clock.end("prepare")
            logits = self.executor.execute_model(batch)
            clock.end("forward")
            return logits
        n = sched.num_tokens
        bucket = next(t for t in self.cfg.buckets if t >= n)
        s = self.host_path.prepare_inputs(sched, self.blocks, width=self.cfg.max_blocks_per_seq,
                                          pad_block=self.model.scratch_block, tokens=bucket,
                                          requests=self.cfg.scheduler.max_num_seqs)
        arrays = [K.from_numpy(a) for a in (s.input_ids, s.positions, s.slot_mapping, s.block_tables,
                                            s.query_start_loc, s.sample_index)]
        clock.end("prepare")
        logits = self.graph(*arrays)
        clock.end("forward")
        return logits

    def step(self) -> StepOutput:
        t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
        d0, x0, g0 = K.dispatches(), K.transfers(), self.graphs_compiled
        clock = _Phases()
        sched = self.scheduler.schedule()
        clock.end("schedule")
        if self.host_cache is not None:
            self._copy_blocks(self.blocks.take_swaps())  # timed with "prepare"
        produced: list[tuple[str, int]] = []
        finished: list[Request] = []
        prefill = decode = 0
        timing = None
        if sched.items:
            logits = self._forward(sched, clock)
            timing = self.executor.last_timing if self.executor else None
            samplers = [(req, n) for req, n in sched.items if req.num_computed + n == req.num_tokens]
            new_tokens = self.sampler(logits, [r.params for r, _ in samplers], [r.rng for r, _ in samplers])
            clock.end("sample")
            now = time.perf_counter()
            prefill, decode = self.host_path.advance(sched.items, self.blocks)
            for (req, _), tok in zip(samplers, new_tokens, strict=True):
                req.output.append(tok)
                produced.append((req.request_id, tok))
                if req.first_token_time is None:
                    req.first_token_time = now
                reason = None
                if tok in req.params.stop_token_ids:
                    reason = "stop"
                elif len(req.output) >= req.params.max_tokens:
                    reason = "length"
                if reason:
                    req.finish_time = now
                    self.scheduler.finish(req, reason)
                    finished.append(req)
        clock.end("update")
        m = StepMetrics(
            step=self.step_count,
            wall_s=time.perf_counter() - t0,
            host_s=time.thread_time() - c0,
            dispatches=K.dispatches() - d0,
            transfers=K.transfers() - x0,
            num_requests=len(sched.items),
            prefill_tokens=prefill,
            decode_tokens=decode,
            generated=len(produced),
            preempted=len(sched.preempted),
            process_s=time.process_time() - p0,
            phases=clock.times,
            compiled=self.graphs_compiled - g0,
            execute=timing,
        )
        self.step_count += 1
        self.history.append(m)
        return StepOutput(produced, finished, m)

    def _copy_blocks(self, swaps: list[tuple[str, int, int]]) -> None:
        """Carry out the block manager's offload copies, in order: device block -> host slot, host slot -> block."""
        if not swaps:
            return
        bs = self.cfg.block_size
        for kind, src, dst in swaps:
            block = src if kind == "out" else dst
            rows = K.to_device(np.arange(block * bs, (block + 1) * bs, dtype=np.int32))
            for layer, cache in self.model.caches.items():  # layer index -> its latent cache
                if kind == "out":
                    self.host_cache[layer, dst] = K.to_host(K.gather_rows(cache, rows))
                else:
                    K.scatter_rows(cache, rows, K.to_device(self.host_cache[layer, src].copy()))

    def run_to_completion(self, max_steps: int = 100000) -> list[StepOutput]:
        outs = []
        while self.has_unfinished():
            if len(outs) >= max_steps:
                raise EngineError(f"requests still unfinished after {max_steps} steps")
            outs.append(self.step())
        return outs

    def abort(self, request_id: str) -> None:
        """Stop a request now (waiting or running) and release its cache blocks."""
        req = self.requests.get(request_id)
        if req is None or req.status is Status.FINISHED:
            return
        if req.status is Status.RUNNING:
            self.scheduler.finish(req, "abort")
        else:
            self.scheduler.waiting.remove(req)
            req.status, req.finish_reason = Status.FINISHED, "abort"

    def forget_finished(self) -> None:
        """Drop finished requests from the id table (long-running workloads)."""
        self.requests = {k: r for k, r in self.requests.items() if r.status is not Status.FINISHED}


@dataclass
class RunSummary:
    """Aggregate metrics over a list of steps."""

    steps: int = 0
    tokens: int = 0
    generated: int = 0
    wall_s: float = 0.0
    host_s: float = 0.0
    dispatches: int = 0
    transfers: int = 0
    process_s: float = 0.0
    compiled: int = 0
    phases: dict[str, list[float]] = field(default_factory=lambda: {p: [0.0, 0.0] for p in PHASES})
    """Summed (wall, calling-thread CPU) seconds per phase."""
    executed: int = 0
    """Steps whose forward pass ran elsewhere (ExecuteTiming recorded); the sums below are over them."""
    round_trip_s: float = 0.0
    stage_wall_s: list[float] = field(default_factory=list)
    stage_thread_s: list[float] = field(default_factory=list)
    stage_dispatches: list[int] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(cls, metrics: list[StepMetrics]) -> RunSummary:
        s = cls()
        for m in metrics:
            s.steps += 1
            s.tokens += m.prefill_tokens + m.decode_tokens
            s.generated += m.generated
            s.wall_s += m.wall_s
            s.host_s += m.host_s
            s.dispatches += m.dispatches
            s.transfers += m.transfers
            s.process_s += m.process_s
            s.compiled += m.compiled
            for name, (wall, cpu) in m.phases.items():
                s.phases[name][0] += wall
                s.phases[name][1] += cpu
            if m.execute is not None:
                e = m.execute
                if not s.executed:
                    n = len(e.stage_wall_s)
                    s.stage_wall_s, s.stage_thread_s, s.stage_dispatches = [0.0] * n, [0.0] * n, [0] * n
                s.executed += 1
                s.round_trip_s += e.round_trip_s
                for k in range(len(e.stage_wall_s)):
                    s.stage_wall_s[k] += e.stage_wall_s[k]
                    s.stage_thread_s[k] += e.stage_thread_s[k]
                    s.stage_dispatches[k] += e.stage_dispatches[k]
        return s
