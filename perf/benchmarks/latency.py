"""pyperf script run by each interpreter under test: times one catalog target per process."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys

import pyperf

from perf.catalog import TARGETS


def _code_digest(*modules: object) -> str:
    h = hashlib.sha256()
    for mod in modules:
        h.update(inspect.getsource(mod).encode())
    return h.hexdigest()[:16]


def _add_cmdline_args(cmd: list[str], args) -> None:
    cmd.extend(("--target", args.target))
    if args.provider:
        cmd.extend(("--provider", args.provider))


def command(target, settings) -> list[str]:
    """The process a `command` target times: this venv's interpreter with the settings' start-up options."""
    import hostenv

    return hostenv.with_interpreter_args(settings, [sys.executable, "-c", target.code])


def _bench_command(runner: pyperf.Runner, target) -> None:
    # The worker runs under the subject's environment (pyperf --inherit-environ): HOSTPGO_HOST_SETTINGS names
    # the settings, PYTHONNODEBUGRANGES and any preload are inherited by the timed process from here.
    import hostenv

    cmd = command(target, hostenv.active())
    runner.metadata.update({
        "hostpgo_target": target.name,
        "hostpgo_unit": target.unit,
        "hostpgo_provider": "command",
        "hostpgo_code_digest": hashlib.sha256(
            (inspect.getsource(inspect.getmodule(main)) + target.code).encode()).hexdigest()[:16],
    })
    runner.bench_command(target.name, cmd)


def _manager_never_times(loops: int) -> float:
    raise AssertionError("pyperf's manager process called the timed function")


def main() -> None:
    runner = pyperf.Runner(
        add_cmdline_args=_add_cmdline_args, program_args=("-m", "perf.benchmarks.latency")
    )
    runner.argparser.add_argument("--target", required=True, choices=sorted(TARGETS))
    runner.argparser.add_argument("--provider", default=None,
                                  help="module with open_workload (default: the catalog's)")
    args = runner.parse_args()
    target = TARGETS[args.target]
    if target.mode == "command":
        _bench_command(runner, target)
        return
    if not (args.worker or args.in_process):
        # pyperf's manager only spawns the worker that times: it opens no workload, so no idle model (and no Ray
        # cluster) of its own shares the cores with the timed process.
        runner.bench_time_func(target.name, _manager_never_times)
        return
    provider = importlib.import_module(args.provider or target.provider)
    wl = provider.open_workload(target.workload, checkpoint=None, seed=0)

    metadata = {
        "hostpgo_target": target.name,
        "hostpgo_unit": target.unit,
        "hostpgo_provider": provider.__name__,
        "hostpgo_code_digest": _code_digest(inspect.getmodule(main), provider),
    }
    if target.mode == "steps":
        probe = wl.run_steps(2)  # setup and first-step effects stay outside timing
        metadata["hostpgo_tokens_per_step"] = probe["tokens"] / 2
        metadata["hostpgo_dispatches_per_step"] = probe.get("dispatches", 0) / 2

        def timed(loops: int) -> float:
            t0 = pyperf.perf_counter()
            wl.run_steps(loops)
            return pyperf.perf_counter() - t0
    else:
        wl.dispatch_loop(10)

        def timed(loops: int) -> float:
            t0 = pyperf.perf_counter()
            wl.dispatch_loop(loops)
            return pyperf.perf_counter() - t0

    try:
        runner.bench_time_func(target.name, timed, metadata=metadata)
    finally:
        shutdown = getattr(wl, "shutdown", None)  # the Ray executor's actors and cluster; nothing for the rest
        if shutdown is not None:
            shutdown()


if __name__ == "__main__":
    main()
