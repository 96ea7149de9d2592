"""Which implementation of the engine's host hot path runs: the compiled extension or the pure-Python reference.

The host hot path is what the engine does per step around the model: the block manager (allocate, free,
the prefix hash chain, LRU eviction), the scheduler's budget loop, input preparation (positions, slot
mapping, block tables, the eager model's index arrays and masks) and the update's advance-and-publish.
The reference is the pure Python in runtime/kv_cache.py, runtime/scheduler.py and runtime/inputs.py;
runtime/_hostpath.pyx is its Cython twin, built by scikit-build-core with the package (CMakeLists.txt).

`selected()` is the compiled one when `runtime._hostpath` imports and matches this source's interface,
else the reference with the reason; `HOSTPGO_RUNTIME_REFERENCE=1` forces the reference. The choice is
made once per process, and the workload record names it (`host_path`, `host_path_reason`). Token
outputs are the same either way (tests/unit/test_runtime_hostpath.py drives both side by side).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache

FORCE_REFERENCE_ENV = "HOSTPGO_RUNTIME_REFERENCE"
"""Set to 1 (or true/yes/on) to run the pure-Python reference even where the extension is built."""

EXTENSION_INTERFACE = 1
"""The `INTERFACE` a built runtime._hostpath must declare to be used (guards against a stale build)."""


@dataclass(frozen=True)
class HostPath:
    """One implementation of the host hot path: the classes and functions the engine calls each step."""

    name: str
    """"cython" (runtime._hostpath) or "python" (the reference)."""
    reason: str
    """Why this one runs (for the record): built and selected, forced by the environment, or why the
    extension could not be used."""
    block_manager: type
    """BlockManager(num_blocks, block_size, enable_prefix_caching) class."""
    schedule_step: Callable
    """schedule_step(scheduler) -> ScheduledStep: the budget loop (needs this path's block manager)."""
    advance: Callable
    """advance(items, blocks) -> (prefill tokens, decode tokens): the update's advance-and-publish."""
    prepare_inputs: Callable
    """prepare_inputs(step, blocks, *, width, pad_block, tokens, requests) -> StepInputs."""
    eager_batch: Callable
    """eager_batch(step_inputs, block_size) -> BatchInputs (its first call imports runtime.model, hence MindSpore)."""


def reference(reason: str = "the pure-Python reference was asked for") -> HostPath:
    """The pure-Python reference (runtime.kv_cache, runtime.scheduler, runtime.inputs)."""
    from runtime.inputs import eager_batch, prepare_inputs
    from runtime.kv_cache import BlockManager
    from runtime.scheduler import advance, schedule_step

    return HostPath("python", reason, BlockManager, schedule_step, advance, prepare_inputs, eager_batch)


def compiled() -> HostPath:
    """The Cython extension runtime._hostpath; raises ImportError when it is not built for this interpreter
    or was built from another interface version."""
    from runtime import _hostpath as ext

    have = getattr(ext, "INTERFACE", None)
    if have != EXTENSION_INTERFACE:
        raise ImportError(f"runtime._hostpath at {ext.__file__} declares interface {have}, this source needs "
                          f"{EXTENSION_INTERFACE} (a stale build: reinstall the project)")
    return HostPath("cython", f"runtime._hostpath built at {ext.__file__}", ext.BlockManager, ext.schedule_step,
                    ext.advance, ext.prepare_inputs, ext.eager_batch)


def forced_reference(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for the reference (FORCE_REFERENCE_ENV set to 1/true/yes/on)."""
    return environ.get(FORCE_REFERENCE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def select(environ: Mapping[str, str]) -> HostPath:
    """The implementation for this environment: the reference when forced or when the extension is unusable."""
    if forced_reference(environ):
        return reference(f"{FORCE_REFERENCE_ENV}={environ[FORCE_REFERENCE_ENV]} forces the pure-Python reference")
    try:
        return compiled()
    except ImportError as e:
        return reference(f"runtime._hostpath unavailable, running the pure-Python reference: {e}")


@cache
def selected() -> HostPath:
    """`select(os.environ)`, decided once per process."""
    return select(os.environ)
