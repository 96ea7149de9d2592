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


class DeviceSampler:
    """Samples one step's rows with MindSpore ops, as vLLM's sampler does, and copies the ids back once.

    Greedy rows take the argmax of the float32 logits; the others follow `sample_row` step for step in
    float64 (temperature, top-k by the k-th largest value, softmax, top-p over the sorted probabilities with
    renormalisation, then the first index whose cumulative probability exceeds one uniform draw from the
    request's generator). Only the rounding of sums may differ from NumPy's, which changes a token only when a
    draw lands within about 1e-16 of a boundary. `logits` may have more rows than `params` (graph mode pads).
    """

    def __init__(self):
        from runtime import kernels as K

        self.k = K
        self.neg_inf = K.to_device(np.array(-np.inf, np.float64))
        self.one = K.to_device(np.array(1.0, np.float64))
        self.zero = K.to_device(np.array(0.0, np.float64))

    def __call__(self, logits, params: list[SamplingParams], rngs: list[np.random.Generator | None]) -> list[int]:
        K = self.k
        n = len(params)
        if n == 0:  # a step of prefill chunks only
            return []
        rows, vocab = logits.shape
        greedy_ids = K.argmax_last(logits)
        if all(p.greedy for p in params):
            return K.to_host(greedy_ids)[:n].tolist()
        temperature = np.ones((rows, 1), np.float64)
        kth_index = np.full((rows, 1), vocab - 1, np.int32)
        top_p = np.ones((rows, 1), np.float64)
        draw = np.zeros((rows, 1), np.float64)
        greedy = np.ones(rows, np.bool_)
        for i, (p, rng) in enumerate(zip(params, rngs, strict=True)):
            if p.greedy:
                continue
            if rng is None:
                raise EngineError("a sampling request needs a random generator")
            greedy[i] = False
            temperature[i] = p.temperature
            if p.top_k and p.top_k < vocab:
                kth_index[i] = p.top_k - 1
            top_p[i] = p.top_p
            draw[i] = rng.random()
        # One sort of the float32 logits gives the order of z and of the probabilities alike (dividing by a
        # positive temperature and exp are monotone); MindSpore's CPU sort works in float32, so float64 values
        # are gathered through the order rather than taken from a sort of them.
        _, order = K.sort_desc_last(logits)
        # float32 / float64 promotes exactly (and costs a tenth of an explicit cast on this backend)
        z = K.div(logits, K.from_numpy(temperature))
        kth = K.gather_last(z, K.gather_last(order, K.from_numpy(kth_index)))
        z = K.where(K.greater_equal(z, kth), z, self.neg_inf)
        e = K.exp(K.sub(z, K.max_last(z)))
        prob = K.div(e, K.sum_last(e, keepdim=True))
        if (top_p < 1.0).any():
            cum = K.cumsum_last(K.gather_last(prob, order))
            before = K.cat_last([K.zeros_like(K.narrow_last(cum, 0, 1)), K.narrow_last(cum, 0, vocab - 1)])
            top_p_t = K.from_numpy(top_p)
            keep_sorted = K.where(K.less(before, top_p_t), self.one, self.zero)  # a prefix reaching top_p
            kept = K.mul(prob, K.scatter_last(K.zeros_like(prob), order, keep_sorted))
            prob = K.where(K.less(top_p_t, self.one), K.div(kept, K.sum_last(kept, keepdim=True)), prob)
        # First index whose cumulative probability exceeds the draw, the last one if none does (NumPy's
        # min(searchsorted(cum, u, "right"), vocab - 1)); argmax of a 0/1 row finds it without integer casts.
        cum = K.cat_last([K.narrow_last(K.cumsum_last(prob), 0, vocab - 1), K.from_numpy(np.full((rows, 1), np.inf))])
        index = K.argmax_last(K.where(K.less(K.from_numpy(draw), cum), self.one, self.zero))
        chosen = K.where(K.from_numpy(greedy), greedy_ids, index)
        return K.to_host(chosen)[:n].tolist()
