"""The engine's sampler in MindSpore ops (runtime/sampling.py holds the parameters and the NumPy reference).

`DeviceSampler` makes the same choices as `runtime.sampling.sample_row` for a whole step's rows at once.
"""

from __future__ import annotations

import numpy as np
from mindspore import nn

from runtime import kernels as K
from runtime.errors import EngineError
from runtime.sampling import SamplingParams


class DeviceSampler:
    """Samples one step's rows with MindSpore ops, as vLLM's sampler does, and copies the ids back once.

    Greedy rows take the argmax of the float32 logits; the others follow `sample_row` step for step in
    float64 (temperature, top-k by the k-th largest value, softmax, top-p over the sorted probabilities with
    renormalisation, then the first index whose cumulative probability exceeds one uniform draw from the
    request's generator). Only the rounding of sums may differ from NumPy's, which changes a token only when a
    draw lands within about 1e-16 of a boundary. `logits` may have more rows than `params` (graph mode pads).

    A step whose rows are all greedy is one argmax and one copy. Otherwise the per-row settings go over as
    NumPy arrays and `_Choose` picks every row: op by op, or, given `compile` (graph mode: a callable that
    turns a Cell into a counted compiled graph, runtime.graph.GraphRunner), in one launch of a graph.
    """

    def __init__(self, compile=None):
        self.k = K
        self.choose = _Choose()
        self.compiled = compile(self.choose) if compile else None
        self._columns: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}

    def columns(self, rows: int, vocab: int) -> tuple[np.ndarray, ...]:
        """Index of each column's left neighbour (0 for the first), first-column and last-column masks."""
        key = (rows, vocab)
        if key not in self._columns:
            col = np.arange(vocab)
            shift = np.broadcast_to(np.maximum(col - 1, 0).astype(np.int32), (rows, vocab)).copy()
            self._columns[key] = (shift, (col == 0)[None, :], (col == vocab - 1)[None, :])
        return self._columns[key]

    def inputs(self, rows: int, vocab: int, params: list[SamplingParams], rngs: list) -> tuple[np.ndarray, ...]:
        """Per-row temperature, k-th index, top-p, draw and greedy flag, then the column constants (NumPy)."""
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
        return temperature, kth_index, top_p, draw, greedy, *self.columns(rows, vocab)

    def warm_up(self, rows: int, vocab: int) -> None:
        """Compile the sampling graph for `rows` x `vocab` logits (graph mode's warm-up)."""
        if self.compiled is not None:
            K = self.k
            arrays = (np.zeros((rows, vocab), np.float32), *self.inputs(rows, vocab, [], []))
            self.compiled(*(K.from_numpy(a) for a in arrays))

    def __call__(self, logits, params: list[SamplingParams], rngs: list[np.random.Generator | None]) -> list[int]:
        K = self.k
        n = len(params)
        if n == 0:  # a step of prefill chunks only
            return []
        if all(p.greedy for p in params):
            return K.to_host(K.argmax_last(logits))[:n].tolist()
        rows, vocab = logits.shape
        arrays = self.inputs(rows, vocab, params, rngs)
        tensors = [K.from_numpy(a) for a in arrays]
        if self.compiled is not None:
            chosen = self.compiled(logits, *tensors)
        else:
            chosen = self.choose.pick(logits, *tensors, bool((arrays[2] < 1.0).any()))
        return K.to_host(chosen)[:n].tolist()


class _Choose(nn.Cell):
    """The sampler's arithmetic over all rows; `construct` (always with top-p) is what graph mode compiles."""

    def __init__(self):
        super().__init__()
        self.neg_inf = K.to_device(np.array(-np.inf, np.float64))
        self.one = K.to_device(np.array(1.0, np.float64))
        self.zero = K.to_device(np.array(0.0, np.float64))
        self.inf = K.to_device(np.array(np.inf, np.float64))

    def construct(self, logits, temperature, kth_index, top_p, draw, greedy, shift, first, last):
        return self.pick(logits, temperature, kth_index, top_p, draw, greedy, shift, first, last, True)

    def pick(self, logits, temperature, kth_index, top_p, draw, greedy, shift, first, last, apply_top_p: bool):
        """Token id per row; `apply_top_p` False skips the top-p ops (same result when every top_p is 1).

        No narrowing or casting of float64 tensors: graph mode's NarrowView refuses float64.
        """        # One sort of the float32 logits gives the order of z and of the probabilities alike (dividing by a
        # positive temperature and exp are monotone); MindSpore's CPU sort works in float32, so float64 values
        # are gathered through the order rather than taken from a sort of them.
        _, order = K.sort_desc_last(logits)
        # float32 / float64 promotes exactly (and costs a tenth of an explicit cast on this backend)
        z = K.div(logits, temperature)
        kth = K.gather_last(z, K.gather_last(order, kth_index))
        z = K.where(K.greater_equal(z, kth), z, self.neg_inf)
        e = K.exp(K.sub(z, K.max_last(z)))
        prob = K.div(e, K.sum_last(e, keepdim=True))
        if apply_top_p:
            cum = K.cumsum_last(K.gather_last(prob, order))
            before = K.where(first, self.zero, K.gather_last(cum, shift))  # cum[j - 1], 0 for j = 0
            keep_sorted = K.where(K.less(before, top_p), self.one, self.zero)  # a prefix reaching top_p
            kept = K.mul(prob, K.scatter_last(K.zeros_like(prob), order, keep_sorted))
            prob = K.where(K.less(top_p, self.one), K.div(kept, K.sum_last(kept, keepdim=True)), prob)
        # First index whose cumulative probability exceeds the draw, the last one if none does (NumPy's
        # min(searchsorted(cum, u, "right"), vocab - 1)); argmax of a 0/1 row finds it without integer casts.
        cum = K.where(last, self.inf, K.cumsum_last(prob))
        index = K.argmax_last(K.where(K.less(draw, cum), self.one, self.zero))
        return K.where(greedy, K.argmax_last(logits), index)
