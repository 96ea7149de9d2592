"""A pure-Python model of host-side operator dispatch: interpreter-bound, needs no MindSpore.

Each step walks a small decoder-layer graph and, for every operator, does what a framework's
host side does before a kernel launch: normalise arguments, infer the output shape with
broadcasting, build a cache key, look the kernel up, and wrap the result in tensor metadata.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Meta:
    shape: tuple[int, ...]
    dtype: str


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and 1 not in (x, y):
            raise ValueError(f"cannot broadcast {a} with {b}")
        out.append(max(x, y))
    return tuple(reversed(out))


def _matmul_shape(a: Meta, b: Meta, **_: object) -> tuple[int, ...]:
    if a.shape[-1] != b.shape[-2]:
        raise ValueError("matmul inner dimensions differ")
    return a.shape[:-1] + b.shape[-1:]


def _elementwise_shape(a: Meta, b: Meta, **_: object) -> tuple[int, ...]:
    return _broadcast(a.shape, b.shape)


def _unary_shape(a: Meta, **_: object) -> tuple[int, ...]:
    return a.shape


def _reduce_shape(a: Meta, *, axis: int = -1, keepdims: bool = True, **_: object) -> tuple[int, ...]:
    axis = axis % len(a.shape)
    if keepdims:
        return a.shape[:axis] + (1,) + a.shape[axis + 1 :]
    return a.shape[:axis] + a.shape[axis + 1 :]


SHAPE_RULES = {
    "MatMul": _matmul_shape,
    "Add": _elementwise_shape,
    "Mul": _elementwise_shape,
    "SiLU": _unary_shape,
    "Softmax": _unary_shape,
    "RMSNorm": _unary_shape,
    "ReduceMean": _reduce_shape,
    "Rope": _unary_shape,
}


class Dispatcher:
    """Kernel lookup with a launch cache keyed by (op, dtypes, shapes, attributes)."""

    def __init__(self) -> None:
        self.cache: dict[tuple, str] = {}
        self.launches = 0

    def __call__(self, op: str, *inputs: Meta, **attrs: object) -> Meta:
        dtype = inputs[0].dtype
        for t in inputs[1:]:
            if t.dtype != dtype:
                raise TypeError(f"{op}: mixed dtypes {dtype} and {t.dtype}")
        shape = SHAPE_RULES[op](*inputs, **attrs)
        key = (op, dtype, tuple(t.shape for t in inputs), tuple(sorted(attrs.items())))
        kernel = self.cache.get(key)
        if kernel is None:
            kernel = f"{op}_{dtype}_{len(self.cache)}"
            self.cache[key] = kernel
        self.launches += 1
        return Meta(shape, dtype)


def decoder_layer(d: Dispatcher, x: Meta, w: dict[str, Meta]) -> Meta:
    h = d("RMSNorm", x, eps=1e-6)
    q = d("Rope", d("MatMul", h, w["wq"]), base=10000)
    k = d("Rope", d("MatMul", h, w["wk"]), base=10000)
    v = d("MatMul", h, w["wv"])
    scores = d("Softmax", d("Mul", d("MatMul", q, w["kT"]), w["scale"]), axis=-1)
    attn = d("MatMul", d("MatMul", scores, w["vproj"]), w["wo"])
    x = d("Add", x, attn)
    h = d("RMSNorm", x, eps=1e-6)
    gate = d("SiLU", d("MatMul", h, w["w1"]))
    up = d("MatMul", h, w["w3"])
    x = d("Add", x, d("MatMul", d("Mul", gate, up), w["w2"]))
    d("ReduceMean", x, axis=-1, keepdims=True)
    del k, v
    return x


class PureWorkload:
    """Same shape as the runtime's workloads: `run_steps(n)` and `dispatch_loop(n)`."""

    def __init__(self, layers: int = 8, hidden: int = 64, batch: int = 1) -> None:
        self.layers = layers
        self.batch = batch
        f32 = "float32"
        self.x = Meta((batch, 1, hidden), f32)
        self.weights = {
            "wq": Meta((hidden, hidden), f32),
            "wk": Meta((hidden, hidden), f32),
            "wv": Meta((hidden, hidden), f32),
            "kT": Meta((hidden, 16), f32),
            "scale": Meta((1,), f32),
            "vproj": Meta((16, hidden), f32),
            "wo": Meta((hidden, hidden), f32),
            "w1": Meta((hidden, 4 * hidden), f32),
            "w3": Meta((hidden, 4 * hidden), f32),
            "w2": Meta((4 * hidden, hidden), f32),
        }
        self.dispatcher = Dispatcher()

    def run_steps(self, n: int) -> dict[str, int]:
        d = self.dispatcher
        before = d.launches
        for _ in range(n):
            x = self.x
            for _layer in range(self.layers):
                x = decoder_layer(d, x, self.weights)
        return {"tokens": n * self.batch, "dispatches": d.launches - before}

    def dispatch_loop(self, n: int) -> dict[str, int]:
        d = self.dispatcher
        a, b = self.x, self.weights["wq"]
        for _ in range(n):
            d("MatMul", a, b)
        return {"dispatches": n}


def open_workload(name: str, checkpoint: object = None, seed: int = 0) -> PureWorkload:
    """Mirror of runtime.workloads.open_workload for the pure-Python benchmark."""
    if name != "pure-python":
        raise KeyError(f"unknown pure workload {name!r}")
    return PureWorkload()
