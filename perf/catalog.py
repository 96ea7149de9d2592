"""Benchmarks as data: what each `--workloads` name runs, through which provider module."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SpecError

RUNTIME_PROVIDER = "runtime.workloads"
PURE_PROVIDER = "perf.benchmarks.pure"


@dataclass(frozen=True)
class Target:
    """One benchmark target: a workload opened through a provider's `open_workload`."""

    name: str
    """The `--workloads` name and the pyperf benchmark name."""
    provider: str
    """Module exposing `open_workload(name, checkpoint=None, seed=0)`."""
    workload: str
    """Workload name passed to `open_workload`."""
    mode: str
    """`steps`: time per engine step (`run_steps`); `dispatch`: time per single-op dispatch."""
    needs_runtime: bool
    """True when it needs the runtime extra (MindSpore) in the interpreter's venv."""
    description: str
    count_units: tuple[int, int] = (50, 550)
    """Units for the two counter runs (the difference is what is counted); kept small under valgrind."""
    attribute_units: int = 3000
    """Units run under `perf record`."""

    @property
    def unit(self) -> str:
        return "step" if self.mode == "steps" else "dispatch"


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("pure-python", PURE_PROVIDER, "pure-python", "steps", False,
               "pure-Python dispatch model, one step = 8 decoder layers of shape inference and kernel lookup"),
        Target("pure-dispatch", PURE_PROVIDER, "pure-python", "dispatch", False,
               "pure-Python dispatch model, one MatMul dispatch", (2000, 22000), 400000),
        Target("decode-b1", RUNTIME_PROVIDER, "decode-b1", "steps", True,
               "runtime decode, batch 1, one engine step", (2, 7), 200),
        Target("decode-b8", RUNTIME_PROVIDER, "decode-b8", "steps", True,
               "runtime decode, batch 8, one engine step", (2, 7), 100),
        Target("prefill", RUNTIME_PROVIDER, "prefill", "steps", True,
               "runtime chunked prefill of long fresh prompts, one engine step", (2, 7), 100),
        Target("serve-mixed", RUNTIME_PROVIDER, "serve-mixed", "steps", True,
               "runtime mixed prefill/decode serving, one engine step", (2, 7), 100),
        Target("op-dispatch", RUNTIME_PROVIDER, "decode-b1", "dispatch", True,
               "runtime single-operator dispatch loop (MindSpore op call from Python)", (100, 1100), 20000),
    )
}

QUICK_DEFAULT = ("pure-python",)


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
