"""Sampling parameters and the host-side sampler (greedy, temperature, top-k, top-p, per-request seeds)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.errors import EngineError


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens; `temperature == 0` means greedy."""

    temperature: float = 0.0
    top_k: int = 0
    """Keep only the k most likely tokens (0: off)."""
    top_p: float = 1.0
    """Keep the smallest set of most likely tokens whose probability reaches top_p (1.0: off)."""
    seed: int | None = None
    """Seed of this request's random stream; None takes one from the engine's seed sequence."""
    max_tokens: int = 16
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise EngineError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise EngineError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise EngineError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise EngineError(f"max_tokens must be >= 1, got {self.max_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sample_row(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator | None) -> int:
    """Pick one token id from a row of logits; deterministic for a given rng state."""
    if params.greedy:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / params.temperature
    if params.top_k and params.top_k < z.shape[0]:
        kth = np.partition(z, -params.top_k)[-params.top_k]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    if params.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        cut = int(np.searchsorted(cum, params.top_p, side="left")) + 1  # smallest prefix reaching top_p
        keep = np.zeros_like(p, dtype=bool)
        keep[order[:cut]] = True
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    if rng is None:
        raise EngineError("a sampling request needs a random generator")
    u = rng.random()
    idx = int(np.searchsorted(np.cumsum(p), u, side="right"))
    return min(idx, p.shape[0] - 1)


def sample(logits: np.ndarray, params: list[SamplingParams], rngs: list[np.random.Generator | None]) -> list[int]:
    """One token per row of logits [S, vocab]."""
    return [sample_row(logits[i], params[i], rngs[i]) for i in range(len(params))]

