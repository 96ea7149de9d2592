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
    def __init__(self, cfg: SchedulerConfig, blocks: BlockManager):
        self.cfg = cfg
        self.blocks = blocks
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
        budget = self.cfg.max_num_batched_tokens
        items: list[tuple[Request, int]] = []
        preempted: list[Request] = []
        scheduled_ids: set[str] = set()

        for req in list(self.running):
            if budget == 0:
                break
            if req.status is not Status.RUNNING:  # preempted earlier in this loop
                continue
            n = min(req.num_tokens - req.num_computed, budget)
            while not self.blocks.allocate(req.request_id, req.num_computed + n):
                victim = self.running[-1]
                self._preempt(victim)
                preempted.append(victim)
                if victim is req:
                    break
            if req.status is not Status.RUNNING:
                continue
            items.append((req, n))
            scheduled_ids.add(req.request_id)
            budget -= n

        while self.waiting and budget > 0 and not preempted and len(self.running) < self.cfg.max_num_seqs:
            req = self.waiting[0]
            prefix = self.blocks.cached_prefix(req.tokens)
            start = len(prefix) * self.blocks.block_size
            remaining = req.num_tokens - start
            if not self.cfg.enable_chunked_prefill and remaining > budget:
                break
            n = min(remaining, budget)
            if not self.blocks.allocate(req.request_id, start + n, prefix):
                break
            self.waiting.popleft()
            req.status = Status.RUNNING
            req.num_computed = start
            req.num_cached_tokens = start
            self.running.append(req)
            items.append((req, n))
            budget -= n
        return ScheduledStep(items, preempted)

    def finish(self, req: Request, reason: str) -> None:
        req.status = Status.FINISHED
        req.finish_reason = reason
        self.running.remove(req)
        self.blocks.free(req.request_id)
