"""Executors: where an eager engine step's forward pass runs (in this process, or split across Ray actors).

The engine (runtime/engine.py) schedules, prepares the step's inputs and samples; the executor turns
the prepared `BatchInputs` into logits, as vLLM's executors stand between its engine and its
workers. `LocalExecutor` calls the model in this process. `runtime.ray_executor.RayExecutor` splits
the layers into pipeline stages, one Ray actor each, and drives them once per step; it reports each
step's round trip (`ExecuteTiming`), so the cost of the remote calls is visible beside the actors'
own compute.

Graph mode keeps its own path (one compiled graph launch, runtime/graph.py); executors serve eager
mode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from runtime.config import DeepseekV3Config
from runtime.model import BatchInputs

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class ExecuteTiming:
    """Where one step's forward pass spent its time when it ran outside the calling thread."""

    round_trip_s: float
    """Driver-side wall time from the first remote call to the logits being in hand (all stages, in turn)."""
    stage_wall_s: tuple[float, ...]
    """Each stage's own forward time (wall), measured inside its actor."""
    stage_thread_s: tuple[float, ...]
    """Each stage's forward time on its actor's executing thread (CPU)."""
    stage_dispatches: tuple[int, ...]
    """Operators each stage dispatched (counted by runtime/kernels.py in the actor's process)."""

    @property
    def overhead_s(self) -> float:
        """Round trip minus the stages' own compute: serialisation, RPC and scheduling (stages run one after
        another, so their times add up)."""
        return self.round_trip_s - sum(self.stage_wall_s)


class Executor(ABC):
    """Runs the forward pass of an eager engine's steps. `cfg` and `num_slots` describe the model it runs."""

    kind: str
    """"local" or "ray" (EXECUTORS)."""
    cfg: DeepseekV3Config
    num_slots: int
    """Cache slots of every layer (block count times block size)."""
    last_timing: ExecuteTiming | None = None
    """The last step's timing when the forward pass ran elsewhere; None for the local executor."""

    @abstractmethod
    def execute_model(self, batch: BatchInputs):
        """Logits [S, vocab] (a MindSpore tensor) for `batch.sample_index`; writes the step's latents to the cache."""

    def describe(self) -> dict:
        """The record's `executor` entry (without per-step times): kind and layout."""
        return {"kind": self.kind}

    def shutdown(self) -> None:  # noqa: B027 - most executors start nothing
        """Release what the executor started (actors, a cluster); idempotent."""


class LocalExecutor(Executor):
    """The whole model in this process: `DeepseekV3Model.forward` on the calling thread."""

    kind = "local"

    def __init__(self, model):
        self.model = model
        self.cfg = model.cfg
        self.num_slots = model.num_slots

    def execute_model(self, batch: BatchInputs):
        return self.model.forward(batch)
