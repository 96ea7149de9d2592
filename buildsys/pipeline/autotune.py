"""BiSheng's Autotuner loop as planned stages (bisheng.autotune = N iterations), run only where the detected
compiler is BiSheng; on clang and GCC the plan carries a note saying it was left out and why.

The loop follows the shape of BiSheng's "Autotuner Feature Guide" (Huawei, BiSheng Compiler documentation):
an initial compilation with `-fautotune-generate` writes the program's tunable code regions ("opportunities")
as YAML into the autotune data directory; `llvm-autotune minimize` starts a search that minimizes the metric it
is fed; each iteration compiles with `-fautotune` (the compiler reads the search's current configuration),
runs the program, and reports the measured metric with `llvm-autotune feedback`; `llvm-autotune finalize`
keeps the best configuration, which the final `-fautotune` build compiles with. The data directory is passed
through AUTOTUNE_DATADIR. hostpgo's metric is the wall time of the profile's [pgo] training tasks on the
tuning build (a noisy figure on a shared machine: the search only orders configurations).

    configure-autotune-generate, build-autotune-generate   the optimized variant + -fautotune-generate
    autotune-init                                          llvm-autotune minimize
    configure-autotune                                     the optimized variant + -fautotune (tuning build dir)
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
from ..errors import HostpgoError
from ..toolchain import Compiler
from ..toolchain.profile import Profile

GENERATE_FLAG = "-fautotune-generate"
USE_FLAG = "-fautotune"
DATADIR_ENV = "AUTOTUNE_DATADIR"
TOOL = "llvm-autotune"


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
    stages: list[Stage] = []
    gen_stages, gen_key, _, _ = build("-autotune-generate", prev_key, (GENERATE_FLAG,), env)
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
             Cmd(make, env=env, cwd=tune_dir, timeout=4 * 3600),
             Call(f"time the [pgo] training tasks on {python}; {tool} feedback <seconds>",
                  _timed_feedback(train(python), tool, env, timeout)))))
    fkey = digest({"stage": "autotune-finalize", "prev": key})
    stages.append(Stage("autotune-finalize", "llvm-autotune finalize: keep the best configuration", fkey,
                        (Cmd((tool, "finalize"), env=env, timeout=600),)))
    return AutotunePlan(tuple(stages), fkey, env, (USE_FLAG,),
                        (f"BiSheng Autotuner loop: {n} iteration(s) timed on the [pgo] tasks; the optimized build "
                         f"compiles with {USE_FLAG} and the finalized configuration",))


def _timed_feedback(actions: list[Cmd | Call], tool: str, env: dict[str, str], timeout: float):
    def fn(ctx: StageContext) -> None:
        start = time.monotonic()
        for a in actions:
            if isinstance(a, Cmd):
                ctx.runner.run(list(a.argv), env={**a.env, **env}, cwd=a.cwd, timeout=min(a.timeout, timeout),
                               ok_codes=a.ok_codes)
            else:
                a.fn(ctx)
        seconds = time.monotonic() - start
        ctx.runner.run([tool, "feedback", f"{seconds:.3f}"], env=env, timeout=600)
        ctx.info.update({"seconds": round(seconds, 3)})
    return fn
