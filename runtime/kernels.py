"""Every MindSpore operator the model dispatches, behind one counter.

The model calls only these functions, so `dispatches()` is the exact number of host-side operator
dispatches (and `transfers()` the host->device copies) a step issued; workloads report both per
token. One integer increment per call is noise next to MindSpore's own per-op host cost.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, mint, ops

# The operators the deployment's layers use, picked by host cost per call on this CPU backend:
# ops.MatMul(transpose_b=True) ~57 us against ~175 us for mint.nn.functional.linear, mint.bmm ~60 us
# against ~115 us for ops.bmm. Same kernels underneath: the pinned token digests are unchanged.
_matmul_bt = ops.MatMul(transpose_b=True)
_counts = [0, 0]  # [dispatches, host->device transfers]

_configured = False


def configure() -> None:
    """PyNative mode on the CPU device, then the host settings' MindSpore and GC half (idempotent).

    The settings come from hostenv.active(): what a launcher passed in HOSTPGO_HOST_SETTINGS, else
    the defaults with environment overrides; runtime.host_apply applies them. By default kernels are launched
    synchronously: `launch_blocking()` turns off MindSpore's asynchronous launch pipeline, whose worker threads
    busy-wait; on a small CPU box synchronous launch roughly halves per-operator host time and makes every
    dispatch's cost land on the calling thread, where the profile of the interpreter sees it.
    Set HOSTPGO_RUNTIME_LAUNCH_BLOCKING=0 (or `mindspore.launch = "pipelined"` in a host settings file) to
    keep MindSpore's asynchronous pipeline (for comparison). A MindSpore API that fails raises
    hostenv.HostSettingsError naming the call.
    """
    global _configured
    if _configured:
        return
    app = host_application()
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    app.apply_mindspore(ms)
    app.apply_gc()
    _configured = True


_host: list = [None]  # the process's one runtime.host_apply.HostApplication, made on first use


def host_application():
    """This process's runtime.host_apply.HostApplication (its settings resolved on first use)."""
    if _host[0] is None:
        from runtime.host_apply import HostApplication

        _host[0] = HostApplication.from_environment()
    return _host[0]


def host_settings():
    """The hostenv.HostSettings this process configured MindSpore with (resolved on first use)."""
    return host_application().settings


def launch_blocking() -> bool:
    """Whether kernels are launched synchronously (the default; see configure)."""
    return host_settings().mindspore.launch == "blocking"


def dispatches() -> int:
    return _counts[0]


def transfers() -> int:
    return _counts[1]


def to_device(a: np.ndarray) -> Tensor:
    _counts[1] += 1
    return Tensor(a)


def from_numpy(a: np.ndarray) -> Tensor:
    """A tensor sharing `a`'s memory (per-step inputs, as vLLM-MindSpore hands them over); one transfer."""
    _counts[1] += 1
    return ms.from_numpy(np.ascontiguousarray(a))


def count_dispatch() -> None:
    """Count one launch that is not a call of the operators below (a compiled graph)."""
    _counts[0] += 1


def to_host(t: Tensor) -> np.ndarray:
    return t.asnumpy()


def parameter(a: np.ndarray, name: str) -> Parameter:
    return Parameter(Tensor(a), name=name, requires_grad=False)


def _counted(op):
    """`op` as the model calls it: one counted dispatch, arguments passed through unchanged."""

    def call(*args):
        _counts[0] += 1
        return op(*args)

    call.__name__ = getattr(op, "__name__", "op")
    return call


linear = _counted(_matmul_bt)
bmm = _counted(mint.bmm)
add = _counted(ops.add)
mul = _counted(ops.mul)
div = _counted(ops.div)
square = _counted(ops.square)
rsqrt = _counted(ops.rsqrt)
sigmoid = _counted(ops.sigmoid)
silu = _counted(ops.silu)


def mean_last(x):
    _counts[0] += 1
    return ops.mean(x, -1, True)


def sum_last(x, keepdim: bool = False):
    _counts[0] += 1
    return ops.sum(x, -1, keepdim)


def softmax_last(x):
    _counts[0] += 1
    return ops.softmax(x, -1)


def topk_last(x, k: int):
    """(values, indices) of the k largest along the last axis (sorted, largest first)."""
    _counts[0] += 1
    return ops.topk(x, k, dim=-1, largest=True, sorted=True)


def gather_rows(table, index):
    """table[index] along axis 0 (an embedding lookup / row gather)."""
    _counts[0] += 1
    return ops.gather(table, index, 0)


def gather_cols(x, index):
    """x[..., index] along the last axis."""
    _counts[0] += 1
    return ops.gather(x, index, x.ndim - 1)


def gather_last(x, index):
    """Per-row gather along the last axis (index has x's rank)."""
    _counts[0] += 1
    return ops.gather_elements(x, x.ndim - 1, index)


def cat_last(parts):
    _counts[0] += 1
    return ops.cat(parts, -1)


def narrow_last(x, start: int, length: int):
    _counts[0] += 1
    return mint.narrow(x, x.ndim - 1, start, length)


def reshape(x, shape):
    _counts[0] += 1
    return ops.reshape(x, shape)


def swap01(x):
    """Swap the first two axes of a rank-3 tensor."""
    _counts[0] += 1
    return ops.transpose(x, (1, 0, 2))


def swap12(x):
    """Swap the last two axes of a rank-3 tensor."""
    _counts[0] += 1
    return ops.transpose(x, (0, 2, 1))


def zeros_like(x):
    _counts[0] += 1
    return ops.zeros_like(x)


def scatter_rows(param, index, rows):
    """param[index] = rows, in place (the KV-cache write)."""
    _counts[0] += 1
    return ops.scatter_update(param, index, rows)


def scatter_add_rows(x, index2d, rows):
    """x with rows added at index2d[:, 0] (returns a new tensor)."""
    _counts[0] += 1
    return ops.tensor_scatter_add(x, index2d, rows)


def greater_equal(a, b):
    _counts[0] += 1
    return ops.ge(a, b)


def where(cond, a, b):
    _counts[0] += 1
    return ops.where(cond, a, b)


# -- sampling (runtime/sampling.py: one batch of ops for every row of a step) ---------------------
def argmax_last(x):
    _counts[0] += 1
    return ops.argmax(x, -1)


def sort_desc_last(x):
    """(values, indices) sorted largest first along the last axis (the CPU kernel sorts in float32)."""
    _counts[0] += 1
    return ops.sort(x, -1, descending=True)


def cumsum_last(x):
    _counts[0] += 1
    return ops.cumsum(x, -1)


def max_last(x):
    _counts[0] += 1
    return ops.max(x, -1, True)[0]


def exp(x):
    _counts[0] += 1
    return ops.exp(x)


def sub(a, b):
    _counts[0] += 1
    return ops.sub(a, b)


def less(a, b):
    _counts[0] += 1
    return ops.lt(a, b)


def scatter_last(x, index, src):
    """out[i, index[i, j]] = src[i, j] (x supplies the shape and every position not written)."""
    _counts[0] += 1
    return ops.tensor_scatter_elements(x, index, src, 1)


def count_true_last(x):
    """Number of True values along the last axis, as int32."""
    _counts[0] += 2
    return ops.sum(ops.cast(x, ms.int32), -1)


def minimum(a, b):
    _counts[0] += 1
    return ops.minimum(a, b)


# -- quantized linears (runtime/quant_linear.py) ---------------------------------------------------------------
# Probed on MindSpore 2.10 CPU (thread time per call on [8, 64]): MatMul of int8 x int8 returns int8 (wrapping);
# int32 x int32 accumulates in int32; Cast costs ~0.4 ms where a mul that promotes int32 or float16 to float32
# costs ~0.07 ms; mint.round (half to even), mint.clamp, mint.abs and mint.amax are the cheaper spellings;
# bitwise_right_shift sign-extends int32 (the 0xF mask after it makes that harmless).
_matmul = ops.MatMul()


def matmul(x, w):
    """x [T, K] @ w [K, N] (GPTQ's [in, out] orientation)."""
    _counts[0] += 1
    return _matmul(x, w)


def cast(x, dtype):
    _counts[0] += 1
    return ops.cast(x, dtype)


def round_half_even(x):
    _counts[0] += 1
    return mint.round(x)


def clamp(x, lo: float, hi: float):
    _counts[0] += 1
    return mint.clamp(x, lo, hi)


def abs_max_last(x):
    """max |x| along the last axis, kept as a size-1 axis (two dispatches)."""
    _counts[0] += 2
    return mint.amax(mint.abs(x), -1, True)


def maximum(a, b):
    _counts[0] += 1
    return ops.maximum(a, b)


def shift_right(x, bits):
    _counts[0] += 1
    return ops.bitwise_right_shift(x, bits)


def bitwise_and(x, mask):
    _counts[0] += 1
    return ops.bitwise_and(x, mask)
