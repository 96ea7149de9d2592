"""Benchmarks as data: what each `--workloads` name runs, through which provider module."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import SpecError

RUNTIME_PROVIDER = "runtime.workloads"
PURE_PROVIDER = "perf.benchmarks.pure"


@dataclass(frozen=True)
class Target:
    """One benchmark target: a workload opened through a provider's `open_workload`, or (mode `command`) a
    fresh interpreter process running `code`, timed whole by pyperf's bench_command."""

    name: str
    """The `--workloads` name and the pyperf benchmark name."""
    provider: str
    """Module exposing `open_workload(name, checkpoint=None, seed=0)`."""
    workload: str
    """Workload name passed to `open_workload`."""
    mode: str
    """`steps`: time per engine step (`run_steps`); `dispatch`: time per single-op dispatch; `command`: time per
    process (`python [startup options] -c code`, started under the subject's host settings)."""
    needs_runtime: bool
    """True when it needs the runtime extra (MindSpore) in the interpreter's venv."""
    description: str
    count_units: tuple[int, int] = (50, 550)
    """Units for the two counter runs (the difference is what is counted); kept small under valgrind."""
    attribute_units: int = 3000
    """Units run under `perf record`."""
    code: str = ""
    """The statement a `command` target's interpreter runs with -c."""
    needs_ray: bool = False
    """True when it runs the runtime's Ray executor: the venv needs the `ray` extra, and each step's model runs in
    actor processes that Ray starts, outside the timed process."""

    @property
    def unit(self) -> str:
        return {"steps": "step", "dispatch": "dispatch", "command": "process"}[self.mode]

    @property
    def per_process(self) -> bool:
        """Whether one unit is a whole process: counter differencing (units N2 - N1 in one process) and
        `perf record` over the measured units do not apply; the counters and attribution stages skip it."""
        return self.mode == "command"

    @property
    def in_one_process(self) -> bool:
        """Whether a unit's work runs inside the process that runs the units, where counters and `perf record`
        see it: not for a per-process target, nor for a Ray target (its model runs in Ray's actor processes)."""
        return not (self.per_process or self.needs_ray)


TARGETS: dict[str, Target] = {
    t.name: t
    # The decode targets count over 20 steps (10 with --quick): a count is the difference of two processes, and
    # the whole process (MindSpore's import and its runtime threads) varies by about 1 M instructions between
    # runs here (6.2 G in all), which over the former 2 quick steps (about 70 M each) was a 0.7-1.5% error in a
    # step's count, more than autotune's 0.5% screening threshold. 20 more decode-b1 steps take 0.22 s natively
    # (1.59 s for 22 steps against 1.13 s for 2, whole process).
    for t in (
        Target("pure-python", PURE_PROVIDER, "pure-python", "steps", False,
               "pure-Python dispatch model, one step = 8 decoder layers of shape inference and kernel lookup"),
        Target("pure-dispatch", PURE_PROVIDER, "pure-python", "dispatch", False,
               "pure-Python dispatch model, one MatMul dispatch", (2000, 22000), 400000),
        Target("decode-b1", RUNTIME_PROVIDER, "decode-b1", "steps", True,
               "runtime decode, batch 1, one engine step", (2, 22), 200),
        Target("decode-b8", RUNTIME_PROVIDER, "decode-b8", "steps", True,
               "runtime decode, batch 8, one engine step", (2, 22), 100),
        Target("prefill", RUNTIME_PROVIDER, "prefill", "steps", True,
               "runtime chunked prefill of long fresh prompts, one engine step", (2, 7), 100),
        Target("serve-mixed", RUNTIME_PROVIDER, "serve-mixed", "steps", True,
               "runtime mixed prefill/decode serving, one engine step", (2, 7), 100),
        # Graph mode (mindspore.jit; vLLM-MindSpore's decode path): the graphs compile in the workload's warm-up,
        # before any measured step; one step is one graph launch plus the host step around it.
        Target("decode-b1-graph", RUNTIME_PROVIDER, "decode-b1-graph", "steps", True,
               "runtime decode, batch 1, graph mode, one engine step", (2, 22), 400),
        Target("decode-b8-graph", RUNTIME_PROVIDER, "decode-b8-graph", "steps", True,
               "runtime decode, batch 8, graph mode, one engine step", (2, 22), 400),
        Target("serve-mixed-graph", RUNTIME_PROVIDER, "serve-mixed-graph", "steps", True,
               "runtime mixed serving, graph mode, one engine step", (2, 7), 400),
        # Quantized weights, eager: the per-call quantized linears are host work of their own.
        Target("decode-b8-w8a8", RUNTIME_PROVIDER, "decode-b8-w8a8", "steps", True,
               "runtime decode, batch 8, W8A8 weights, one engine step", (2, 7), 100),
        Target("decode-b8-a16w4", RUNTIME_PROVIDER, "decode-b8-a16w4", "steps", True,
               "runtime decode, batch 8, A16W4 weights, one engine step", (2, 7), 100),
        Target("serve-offload", RUNTIME_PROVIDER, "serve-offload", "steps", True,
               "runtime serving with KV-cache offload to host memory, one engine step", (2, 7), 100),
        # The Ray executor (vLLM's Ray distributed executor's shape): the driver schedules, two stage actors run the
        # layers. A step's time is the driver's wall time, the actors' compute and Ray's round trips included.
        Target("ray-decode", RUNTIME_PROVIDER, "ray-decode", "steps", True,
               "runtime decode, batch 8, the model in two pipeline stages on Ray actors, one engine step", (2, 7), 100,
               needs_ray=True),
        Target("op-dispatch", RUNTIME_PROVIDER, "decode-b1", "dispatch", True,
               "runtime single-operator dispatch loop (MindSpore op call from Python)", (100, 1100), 20000),
        # Start-up: a whole interpreter process under the subject's host settings (PYTHONNODEBUGRANGES,
        # -X frozen_modules, and the venv's pycs, precompiled per `startup.bytecode` when asked).
        Target("startup", "", "", "command", True,
               "interpreter start-up and `import runtime.engine` (MindSpore, NumPy, SciPy: ~1,900 modules), "
               "one process", code="import runtime.engine"),
        Target("startup-bare", "", "", "command", False,
               "interpreter start-up and the runtime's MindSpore-free modules (`import runtime.scheduler`: "
               "NumPy), one process", code="import runtime.scheduler"),
    )
}

QUICK_DEFAULT = ("pure-python",)


def venv_extras(targets: Iterable[Target]) -> tuple[str, ...]:
    """The project extras a measurement venv needs to run `targets` (pure): `perf` always, `runtime` for MindSpore,
    `ray` for the Ray executor."""
    chosen = list(targets)
    return ("perf", *(("runtime",) if any(t.needs_runtime for t in chosen) else ()),
            *(("ray",) if any(t.needs_ray for t in chosen) else ()))


def parse_targets(text: str, flag: str = "--workloads") -> list[Target]:
    """Parse a comma-separated list of target names."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise SpecError(f"{flag}: empty list; known: {', '.join(TARGETS)}")
    out: list[Target] = []
    for name in names:
        if name not in TARGETS:
            raise SpecError(f"{flag}: unknown workload {name!r}; known: {', '.join(TARGETS)}")
        if TARGETS[name] not in out:
            out.append(TARGETS[name])
    return out
