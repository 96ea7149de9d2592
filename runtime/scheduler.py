"""Requests and the continuous-batching scheduler (vLLM-style: one token budget per step).

Each step the scheduler first gives running requests their next tokens (one for a decoding
request, the next chunk for one still prefilling), then admits waiting requests in arrival order,
starting each after its longest cached prefix and chunking its prompt to what is left of the
budget. When the cache runs out of blocks the most recently admitted running request is preempted
(its blocks freed, to be recomputed later from its prompt and the tokens it already produced).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from runtime.errors import EngineError
from runtime.kv_cache import BlockManager
from runtime.sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    """One generation request and its progress."""

    request_id: str
    prompt: list[int]
    params: SamplingParams
    rng: np.random.Generator | None = None
    output: list[int] = field(default_factory=list)
    num_computed: int = 0
    status: Status = Status.WAITING
    finish_reason: str | None = None
    num_cached_tokens: int = 0
    num_preemptions: int = 0
    arrival_time: float = 0.0
    first_token_time: float | None = None
    finish_time: float | None = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        if self.finish_time is None or self.first_token_time is None or len(self.output) < 2:
            return None
        return (self.finish_time - self.first_token_time) / (len(self.output) - 1)


@dataclass
class ScheduledStep:
    """What one step runs: (request, number of new tokens) in batch order."""

    items: list[tuple[Request, int]]
    preempted: list[Request]

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.items)


@dataclass(frozen=True)
class SchedulerConfig:
    """Batching limits."""

    max_num_batched_tokens: int = 64
    """Token budget of one step (prefill chunks plus decode tokens)."""
    max_num_seqs: int = 16
    """Most requests running at once."""
    enable_chunked_prefill: bool = True
    """Split long prompts across steps; without it a prompt must fit the budget whole."""

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:  # a zero budget schedules nothing, step after step
            raise EngineError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.max_num_seqs < 1:
            raise EngineError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")


class Scheduler:
    """Waiting and running requests over one block manager; `schedule()` picks each step's batch."""

    def __init__(self, cfg: SchedulerConfig, blocks: BlockManager,
                 budget_loop: Callable[[Scheduler], ScheduledStep] | None = None):
        self.cfg = cfg
        self.blocks = blocks
        self.budget_loop = budget_loop or schedule_step
        """Picks each step's batch: `schedule_step` below, or the compiled twin that runtime/hostpath.py passes
        together with its block manager."""
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    def add(self, req: Request) -> None:
        need = self.blocks.blocks_needed(len(req.prompt) + req.params.max_tokens)
        if need > self.blocks.num_blocks:
            raise EngineError(
                f"request {req.request_id}: prompt + max_tokens needs {need} cache blocks, the cache has "
                f"{self.blocks.num_blocks}"
            )
        if not self.cfg.enable_chunked_prefill and len(req.prompt) > self.cfg.max_num_batched_tokens:
            raise EngineError(
                f"request {req.request_id}: prompt of {len(req.prompt)} tokens exceeds the step budget "
                f"({self.cfg.max_num_batched_tokens}) and chunked prefill is off"
            )
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, victim: Request) -> None:
        self.running.remove(victim)
        self.blocks.free(victim.request_id)
        victim.status = Status.WAITING
        victim.num_computed = 0
        victim.num_preemptions += 1
        self.waiting.appendleft(victim)

    def schedule(self) -> ScheduledStep:
        """The next step's batch (this scheduler's `budget_loop`)."""
        return self.budget_loop(self)

    def finish(self, req: Request, reason: str) -> None:
        req.status = Status.FINISHED
        req.finish_reason = reason
        self.running.remove(req)
        self.blocks.free(req.request_id)


def schedule_step(sched: Scheduler) -> ScheduledStep:
    """One step's batch under the token budget (the reference budget loop; runtime/_hostpath.pyx has its twin)."""
    blocks = sched.blocks
    budget = sched.cfg.max_num_batched_tokens
    items: list[tuple[Request, int]] = []
    preempted: list[Request] = []

    for req in list(sched.running):
        if budget == 0:
            break
        if req.status is not Status.RUNNING:  # preempted earlier in this loop
            continue
        n = min(req.num_tokens - req.num_computed, budget)
        while not blocks.allocate(req.request_id, req.num_computed + n):
            victim = sched.running[-1]
            sched._preempt(victim)
            preempted.append(victim)
            if victim is req:
                break
        if req.status is not Status.RUNNING:
            continue
        items.append((req, n))
        budget -= n

    while sched.waiting and budget > 0 and not preempted and len(sched.running) < sched.cfg.max_num_seqs:
        req = sched.waiting[0]
        prefix = blocks.cached_prefix(req.tokens)
        start = len(prefix) * blocks.block_size
        remaining = req.num_tokens - start
        if not sched.cfg.enable_chunked_prefill and remaining > budget:
            break
        n = min(remaining, budget)
        if not blocks.allocate(req.request_id, start + n, prefix):
            break
        sched.waiting.popleft()
        req.status = Status.RUNNING
        req.num_computed = start
        req.num_cached_tokens = start
        sched.running.append(req)
        items.append((req, n))
        budget -= n
    return ScheduledStep(items, preempted)


def advance(items: list[tuple[Request, int]], blocks: BlockManager) -> tuple[int, int]:
    """After a step's forward pass: move each request past its computed tokens and publish its newly full
    blocks to the prefix cache. Returns (prefill tokens, decode tokens) of the step."""
    prefill = decode = 0
    for req, n in items:
        if req.num_computed + n == req.num_tokens and req.output:
            decode += n
        else:
            prefill += n
        req.num_computed += n
        blocks.commit_full_blocks(req.request_id, req.tokens, req.num_computed)
    return prefill, decode
