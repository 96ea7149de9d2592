"""A stand-in for runtime.workloads with the same contract, for harness tests without MindSpore."""

from __future__ import annotations

import os


class FakeWorkload:
    def __init__(self, name: str, batch: int) -> None:
        self.name = name
        self.batch = batch
        self.state = 0
        self.ops_per_step = 20000

    def _op(self) -> None:
        self.state = (self.state * 31 + 7) % 1_000_003

    def run_steps(self, n: int) -> dict[str, int]:
        for _ in range(n):
            for _ in range(self.ops_per_step):
                self._op()
        return {"tokens": n * self.batch, "dispatches": n * self.ops_per_step}

    def shutdown(self) -> None:
        _note("shutdown")

    def dispatch_loop(self, n: int) -> dict[str, int]:
        for _ in range(n):
            self._op()
        return {"dispatches": n}


def _note(event: str) -> None:
    """Append `event pid ppid` to $FAKE_WORKLOAD_LOG (when set): which processes opened and shut down a workload."""
    log = os.environ.get("FAKE_WORKLOAD_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{event} {os.getpid()} {os.getppid()}\n")


def open_workload(name: str, checkpoint: object = None, seed: int = 0) -> FakeWorkload:
    _note("open")
    batch = {"decode-b1": 1, "decode-b8": 8, "serve-mixed": 4}[name]
    return FakeWorkload(name, batch)
