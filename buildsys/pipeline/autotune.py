"""BiSheng's Autotuner loop as planned stages (bisheng.autotune = N iterations), run only where the detected
compiler is BiSheng; on clang and GCC the plan carries a note saying it was left out and why.

The loop is the one the BiSheng-Autotuner README documents (openEuler's BiSheng-Autotuner project, "Running
BiSheng-Autotuner", and Huawei's "Autotuner Feature Guide" for the BiSheng compiler): AUTOTUNE_DATADIR names an
empty data directory; an initial compilation with `-fautotune-generate` writes the program's tunable code
structures there; `llvm-autotune minimize` initializes a search that minimizes the metric it is fed; each
iteration compiles with `-fautotune` (the compiler reads the search's current configuration), runs the program,
and reports the metric with `llvm-autotune feedback VALUE` (a failed compile or run reports a worst-case value,
as the README advises); `llvm-autotune finalize` writes the best configuration, which the final `-fautotune`
compilation uses. hostpgo's metric is the wall time of the profile's [pgo] training tasks on the tuning build
(a noisy figure on a shared machine: the search only orders configurations).

    autotune-datadir                                       an empty AUTOTUNE_DATADIR
    configure-autotune-generate, build-autotune-generate   the optimized variant + -fautotune-generate
    autotune-init                                          llvm-autotune minimize
    configure-autotune, build-autotune                     the optimized variant + -fautotune (tuning build dir)
    autotune-1 .. autotune-N                               make clean; make; time the tasks; llvm-autotune feedback
    autotune-finalize                                      llvm-autotune finalize
    (the optimized build then compiles with -fautotune and AUTOTUNE_DATADIR: the finalized configuration)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.stages import Call, Cmd, Stage, StageContext, digest
from ..errors import CommandError, HostpgoError
from ..toolchain import Compiler
from ..toolchain.profile import Profile

GENERATE_FLAG = "-fautotune-generate"
USE_FLAG = "-fautotune"
DATADIR_ENV = "AUTOTUNE_DATADIR"
TOOL = "llvm-autotune"
WORST = "9999"
"""What an iteration whose rebuild or run failed feeds back (the README's worst case for `minimize`)."""


@dataclass(frozen=True)
class AutotunePlan:
    stages: tuple[Stage, ...]
    key: str
    """The last loop stage's key (the optimized build's `prev`)."""
    env: dict[str, str]
    """What the optimized build's compiles need to read the finalized configuration (AUTOTUNE_DATADIR)."""
    cflags: tuple[str, ...]
    """What the optimized build adds to its compile flags (-fautotune)."""
    notes: tuple[str, ...] = ()


def wanted(profile: Profile, comp: Compiler) -> tuple[bool, str | None]:
    """(plan the loop, note): the loop only on BiSheng with bisheng.autotune > 0; elsewhere a note says why not."""
    n = profile.bisheng.autotune
    if n == 0:
        return False, None
    if comp.family != "bisheng":
        return False, (f"left out BiSheng's Autotuner loop (bisheng.autotune = {n}): -fautotune-generate, -fautotune "
                       f"and llvm-autotune exist only in the BiSheng compiler, and the detected compiler is "
                       f"{comp.family} ({comp.version_text}); the autotune search varies [tuning] keys instead")
    return True, None


def tool_path(comp: Compiler) -> str:
    """llvm-autotune beside BiSheng's clang."""
    return str(Path(comp.cc).with_name(TOOL))


BuildFn = Callable[[str, str, tuple[str, ...], dict[str, str]], tuple[list[Stage], str, Path, tuple[str, ...]]]
"""(stage-name suffix, prev key, extra compile flags, build env) -> (configure+build stages, last key, build dir,
the build's make command: the iterations rebuild with the same make variables)."""
TrainFn = Callable[[str], list[Cmd | Call]]
"""python of a build -> the actions of the [pgo] training tasks on it."""


def plan(*, profile: Profile, comp: Compiler, data_dir: Path, prev_key: str, build: BuildFn,
         train: TrainFn, timeout: float = 7200) -> AutotunePlan:
    """The loop's stages (pure). `build` makes the configure+build stages of a copy of the optimized variant with
    extra flags; `train` the timed workload."""
    n = profile.bisheng.autotune
    if n <= 0 or comp.family != "bisheng":
        raise HostpgoError("autotune.plan is for a BiSheng compiler with bisheng.autotune > 0 (see autotune.wanted)")
    tool = tool_path(comp)
    env = {DATADIR_ENV: str(data_dir)}
    dkey = digest({"stage": "autotune-datadir", "prev": prev_key, "dir": str(data_dir)})
    stages: list[Stage] = [Stage("autotune-datadir", f"an empty autotune data directory {data_dir}", dkey,
                                 (Call(f"mkdir {data_dir}", lambda ctx: data_dir.mkdir(parents=True)),),
                                 outputs=(data_dir,))]
    gen_stages, gen_key, _, _ = build("-autotune-generate", dkey, (GENERATE_FLAG,), env)
    stages.extend(gen_stages)
    init_key = digest({"stage": "autotune-init", "prev": gen_key, "tool": tool})
    stages.append(Stage("autotune-init", "llvm-autotune minimize: start the search over the generated opportunities",
                        init_key, (Cmd((tool, "minimize"), env=env, timeout=600),),
                        notes=(f"autotune data directory {data_dir} ({DATADIR_ENV})",)))
    tune_stages, key, tune_dir, make = build("-autotune", init_key, (USE_FLAG,), env)
    stages.extend(tune_stages)
    python = str(tune_dir / "python")
    for i in range(1, n + 1):
        key = digest({"stage": f"autotune-{i}", "prev": key, "iterations": n})
        stages.append(Stage(
            f"autotune-{i}", f"autotune iteration {i} of {n}: rebuild with the search's configuration, time the "
            "training tasks, feed the time back", key,
            (Cmd(("make", "clean"), env=env, cwd=tune_dir, timeout=1800),
             Call(f"{' '.join(make)} (in {tune_dir}); time the [pgo] training tasks on {python}; {tool} feedback "
                  f"<seconds> ({WORST} when the rebuild or a task fails)",
                  _iteration(make, tune_dir, train(python), tool, env, timeout)))))
    fkey = digest({"stage": "autotune-finalize", "prev": key})
    stages.append(Stage("autotune-finalize", "llvm-autotune finalize: keep the best configuration", fkey,
                        (Cmd((tool, "finalize"), env=env, timeout=600),)))
    return AutotunePlan(tuple(stages), fkey, env, (USE_FLAG,),
                        (f"BiSheng Autotuner loop: {n} iteration(s) timed on the [pgo] tasks; the optimized build "
                         f"compiles with {USE_FLAG} and the finalized configuration",
                         "BiSheng-Autotuner advises -fautotune-generate on hot files only (over 500 files make a "
                         "slow start and a large search space); every CPython file gets it here"))


def _iteration(make: tuple[str, ...], tune_dir: Path, actions: list[Cmd | Call], tool: str, env: dict[str, str],
               timeout: float):
    def fn(ctx: StageContext) -> None:
        value, failed = WORST, ""
        try:
            ctx.runner.run(list(make), env=env, cwd=tune_dir, timeout=4 * 3600)
            start = time.monotonic()
            for a in actions:
                if isinstance(a, Cmd):
                    ctx.runner.run(list(a.argv), env={**a.env, **env}, cwd=a.cwd, timeout=min(a.timeout, timeout),
                                   ok_codes=a.ok_codes)
                else:
                    a.fn(ctx)
            value = f"{time.monotonic() - start:.3f}"
        except CommandError as e:  # this configuration does not build or run: the search must avoid it
            failed = " ".join(str(e).split())[:300]
        ctx.runner.run([tool, "feedback", value], env=env, timeout=600)
        ctx.info.update({"feedback": value, **({"failed": failed} if failed else {})})
    return fn
