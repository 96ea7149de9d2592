"""The serving engine: requests in, tokens out, one scheduled batch per `step()`.

`LLMEngine.step()` = schedule (runtime/scheduler.py) -> build the batch's index arrays on the host
(`build_batch`) -> one model forward over all scheduled tokens (runtime/model.py) -> copy the
sampled rows' logits to the host -> sample (runtime/sampling.py) -> advance requests, publish full
blocks to the prefix cache, finish and free. Every step records wall time, the calling thread's CPU
time, operator dispatches and tokens; every request records TTFT and TPOT.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from runtime import kernels as K
from runtime.errors import EngineError
from runtime.kv_cache import BlockManager
from runtime.model import NEG, BatchInputs, DeepseekV3Model
from runtime.sampling import SamplingParams, sample
from runtime.scheduler import Request, ScheduledStep, Scheduler, SchedulerConfig, Status


@dataclass(frozen=True)
class EngineConfig:
    """Cache geometry, batching limits and the engine's seed."""

    block_size: int = 16
    num_blocks: int = 64
    scheduler: SchedulerConfig = SchedulerConfig()
    enable_prefix_caching: bool = True
    seed: int = 0
    """Seeds requests that do not bring their own seed (in the order they are added)."""


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


@dataclass
class StepOutput:
    """Tokens produced by one step, in batch order, and which requests finished."""

    tokens: list[tuple[str, int]]
    finished: list[Request]
    metrics: StepMetrics


def build_batch(step: ScheduledStep, blocks: BlockManager) -> BatchInputs:
    """Flatten the scheduled requests into the model's index arrays (all host-side NumPy)."""
    bs = blocks.block_size
    items = step.items
    r = len(items)
    qmax = max(n for _, n in items)
    lmax = max(req.num_computed + n for req, n in items)
    ids, pos, slots, out_index, sample_index = [], [], [], [], []
    query_index = np.zeros(r * qmax, np.int32)
    context = np.zeros((r, lmax), np.int32)
    mask = np.full((r, qmax, 1, lmax), NEG, np.float32)
    flat = 0
    for k, (req, n) in enumerate(items):
        start, end = req.num_computed, req.num_computed + n
        table = np.asarray(blocks.blocks_of(req.request_id), np.int64)
        p = np.arange(start, end)
        all_pos = np.arange(end)
        all_slots = table[all_pos // bs] * bs + all_pos % bs
        ids.extend(req.tokens[start:end])
        pos.append(p)
        slots.append(all_slots[start:end])
        context[k, :end] = all_slots
        query_index[k * qmax : k * qmax + n] = np.arange(flat, flat + n)
        out_index.append(np.arange(k * qmax, k * qmax + n))
        mask[k, :n, 0, :end] = np.where(all_pos[None, :] <= p[:, None], 0.0, NEG)
        if end == req.num_tokens:  # the last known token is in: this request samples
            sample_index.append(flat + n - 1)
        flat += n
    return BatchInputs(
        input_ids=np.asarray(ids, np.int32),
        positions=np.concatenate(pos).astype(np.int32),
        slot_mapping=np.concatenate(slots).astype(np.int32),
        query_index=query_index,
        context_slots=context.reshape(-1),
        mask=mask,
        output_index=np.concatenate(out_index).astype(np.int32),
        sample_index=np.asarray(sample_index, np.int32),
        num_requests=r,
        max_query=qmax,
        max_context=lmax,
    )


class LLMEngine:
    """Continuous-batching engine over one DeepseekV3Model."""

    def __init__(self, model: DeepseekV3Model, cfg: EngineConfig = EngineConfig()):
        if model.num_slots < cfg.num_blocks * cfg.block_size:
            raise EngineError(
                f"model cache has {model.num_slots} slots, engine needs {cfg.num_blocks * cfg.block_size}"
            )
        self.model = model
        self.cfg = cfg
        self.blocks = BlockManager(cfg.num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(cfg.scheduler, self.blocks)
        self.requests: dict[str, Request] = {}
        self.seeds = np.random.SeedSequence(cfg.seed)
        self.step_count = 0
        self.history: list[StepMetrics] = []

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

    def step(self) -> StepOutput:
        t0, c0 = time.perf_counter(), time.thread_time()
        d0, x0 = K.dispatches(), K.transfers()
        sched = self.scheduler.schedule()
        produced: list[tuple[str, int]] = []
        finished: list[Request] = []
        prefill = decode = 0
        if sched.items:
            batch = build_batch(sched, self.blocks)
            logits = K.to_host(self.model.forward(batch))
            samplers = [(req, n) for req, n in sched.items if req.num_computed + n == req.num_tokens]
            new_tokens = sample(logits, [r.params for r, _ in samplers], [r.rng for r, _ in samplers])
            now = time.perf_counter()
            for req, n in sched.items:
                if req.num_computed + n == req.num_tokens and req.output:
                    decode += n
                else:
                    prefill += n
                req.num_computed += n
                self.blocks.commit_full_blocks(req.request_id, req.tokens, req.num_computed)
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
        )
        self.step_count += 1
        self.history.append(m)
        return StepOutput(produced, finished, m)

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
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(cls, metrics: list[StepMetrics]) -> "RunSummary":
        s = cls()
        for m in metrics:
            s.steps += 1
            s.tokens += m.prefill_tokens + m.decode_tokens
            s.generated += m.generated
            s.wall_s += m.wall_s
            s.host_s += m.host_s
            s.dispatches += m.dispatches
            s.transfers += m.transfers
        return s
