"""The in-process half of host settings: MindSpore launch/threads/affinity and the GC policy, applied by the
runtime to itself, and what was applied (for the workload record). Everything else is hostenv's."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import hostenv
from hostenv import observe
from hostenv.errors import HostSettingsError

CPUSET_V1 = Path("/sys/fs/cgroup/cpuset/cpuset.cpus")
"""The file MindSpore 2.10's set_cpu_affinity reads; without it MindSpore binds nothing and only logs a warning."""


def _call(api: str, fn: Callable[[], object]) -> dict:
    try:
        fn()
    except Exception as exc:  # MindSpore raises RuntimeError/ValueError/TypeError; all are reported
        raise HostSettingsError(f"{api} failed on this device: {type(exc).__name__}: {exc}") from exc
    return {"api": api, "status": "applied"}


class HostApplication:
    """One process's application of its host settings: what it asked for and every call made so far."""

    def __init__(self, settings: hostenv.HostSettings, *, cpuset: Path = CPUSET_V1) -> None:
        self.settings = settings
        """The resolved settings being applied."""
        self.cpuset = cpuset
        self.applied: list[dict] = []
        """Each API called at configure time, in order: {"api", "status"}."""
        self.warmup: dict = {}
        """What `after_warmup` did (empty until it froze something)."""

    @classmethod
    def from_environment(cls) -> HostApplication:
        """For the settings a launcher passed (HOSTPGO_HOST_SETTINGS), else the defaults with env overrides."""
        return cls(hostenv.active())

    def apply_mindspore(self, ms) -> list[dict]:
        """Apply the MindSpore half before any operator runs; returns what was called. A failing API raises."""
        m = self.settings.mindspore
        done: list[dict] = []
        if m.dispatch_threads is not None:
            done.append(_call(f"mindspore.runtime.dispatch_threads_num({m.dispatch_threads})",
                              lambda: ms.runtime.dispatch_threads_num(m.dispatch_threads)))
        if m.op_threads is not None:
            done.append(_call(f"mindspore.device_context.cpu.op_tuning.threads_num({m.op_threads})",
                              lambda: ms.device_context.cpu.op_tuning.threads_num(m.op_threads)))
        if m.affinity:
            cpus = list(m.affinity_cpus) or None
            modules = {k: list(v) for k, v in m.affinity_modules} or None
            api = f"mindspore.runtime.set_cpu_affinity(True, {cpus}, {modules})"
            if not self.cpuset.is_file():
                raise HostSettingsError(f"{api}: {self.cpuset} is missing here, so MindSpore 2.10 would bind "
                                        "nothing (it only logs a warning); leave mindspore.affinity off")
            done.append(_call(api, lambda: ms.runtime.set_cpu_affinity(True, cpus, modules)))
        if m.launch == "blocking":
            done.append(_call("mindspore.runtime.launch_blocking()", ms.runtime.launch_blocking))
        else:
            done.append({"api": "mindspore.runtime.launch_blocking()", "status": "not called (launch = pipelined)"})
        self.applied.extend(done)
        return done

    def apply_gc(self) -> list[dict]:
        """Apply the GC thresholds and enable/disable (at configure time; freezing waits for the warm-up)."""
        g = self.settings.gc
        done = []
        if g.thresholds is not None:
            gc.set_threshold(*g.thresholds)
            done.append({"api": f"gc.set_threshold{tuple(g.thresholds)}", "status": "applied"})
        if not g.enabled:
            gc.disable()
            done.append({"api": "gc.disable()", "status": "applied"})
        self.applied.extend(done)
        return done

    def after_warmup(self) -> dict:
        """Called by a workload once warmed up: gc.freeze() when the settings ask for it."""
        if self.settings.gc.freeze_after_warmup:
            gc.collect()
            gc.freeze()
            self.warmup = {"api": "gc.collect(); gc.freeze()", "status": "applied",
                           "frozen_objects": gc.get_freeze_count()}
        return dict(self.warmup)

    def record(self) -> dict:
        """The workload record's `host_settings`: asked, applied, observed (hostenv.observe.record)."""
        return observe.record(self.settings, self.applied + ([self.warmup] if self.warmup else []))
