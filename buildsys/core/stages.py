"""The stage model (pure data), stamps keyed by input digests, and the executor that runs a plan."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from hostpgo import fsutil
from hostpgo.runner import Runner, format_command

from ..errors import CommandError, HostpgoError

STAMP_VERSION = 1


def digest(obj: Any) -> str:
    """sha256 of a JSON rendering: the key of a stage's inputs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ChannelFlag:
    """A setting and the channel through which it reaches the build."""

    channel: str
    """One of its build system's CHANNELS (buildsys/systems/), e.g. autotools' CFLAGS_NODIST, cmake's
    cache-entry, bazel's --copt; `env` for the environment of a run."""
    name: str
    """Variable or option name (CFLAGS_NODIST, CC, --enable-shared, LLVM_PROFILE_FILE, ...)."""
    value: str
    why: str = ""
    """Which profile key (or engine rule) put it there."""


@dataclass(frozen=True)
class Cmd:
    """An external command of a stage."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    timeout: float = 3600
    ok_codes: tuple[int, ...] = (0,)
    nice: bool = True
    retries: int = 0
    """Extra attempts after a failure (for test suites with load-sensitive tests); each is recorded."""

    def describe(self) -> str:
        return format_command(self.argv, self.env, self.cwd)


@dataclass(frozen=True)
class Call:
    """An in-process step of a stage (unpack, publish by rename, merge, ...), described for the plan."""

    what: str
    fn: Callable[[StageContext], None]

    def describe(self) -> str:
        return f"[hostpgo] {self.what}"


@dataclass(frozen=True)
class Stage:
    name: str
    """Unique within the plan, e.g. `configure-optimized`."""
    title: str
    key: str
    """Digest of everything the stage's result depends on."""
    actions: tuple[Cmd | Call, ...]
    outputs: tuple[Path, ...] = ()
    """Removed before the stage runs; the stamp is only trusted while they all exist."""
    flags: tuple[ChannelFlag, ...] = ()
    notes: tuple[str, ...] = ()
    requires: tuple[Path, ...] = ()
    """Shared results (e.g. the unpacked source) that must exist for the stamp to count, but that
    this stage does not delete before running."""
    independent: bool = False
    """Running it does not force later stages to run: the stages that use its result carry its key
    in their own (a shared dependency such as the runtime's packages)."""


@dataclass(frozen=True)
class BuildPlan:
    """Everything one build will do, computed without running anything."""

    build_id: str
    """`<target>-<version>-<profile>`."""
    stages: tuple[Stage, ...]
    notes: tuple[str, ...]
    summary: dict[str, Any]
    """Profile, toolchain, source, patches, tasks, prefixes: what the manifest records."""
    finish: Callable[[Execution], None] | None = None
    """Run after all stages (e.g. write manifests); not a stage, always runs."""


@dataclass
class StageResult:
    name: str
    key: str
    skipped: bool
    seconds: float
    """Time the stage took when it last ran (for a skipped stage, the recorded time)."""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """What a Call sees: the runner writing the stage log, and `info` saved into the stamp."""

    runner: Runner
    info: dict[str, Any]
    results: dict[str, StageResult]


@dataclass
class Execution:
    plan: BuildPlan
    results: dict[str, StageResult]


class Stamps:
    """One JSON stamp per (build id, stage); written by rename, so a stamp is either whole or absent."""

    def __init__(self, root: Path, build_id: str) -> None:
        self.dir = root / build_id

    def path(self, stage: str) -> Path:
        return self.dir / f"{stage}.json"

    def read(self, stage: Stage) -> dict[str, Any] | None:
        p = self.path(stage.name)
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        if data.get("version") != STAMP_VERSION or data.get("key") != stage.key:
            return None
        if not all(Path(o).exists() for o in (*stage.outputs, *stage.requires)):
            return None
        return data

    def write(self, stage: Stage, seconds: float, info: dict[str, Any]) -> None:
        fsutil.write_json(self.path(stage.name), {
            "version": STAMP_VERSION, "key": stage.key, "seconds": round(seconds, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "info": info})

    def remove(self, stage: Stage) -> None:
        self.path(stage.name).unlink(missing_ok=True)


def remove_path(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)


def would_skip(plan: BuildPlan, stamps_root: Path) -> dict[str, bool]:
    """For --dry-run: which stages the executor would skip (a stage after one that runs also runs)."""
    stamps = Stamps(stamps_root, plan.build_id)
    out, dirty = {}, False
    for st in plan.stages:
        ok = not dirty and stamps.read(st) is not None
        dirty = dirty or (not ok and not st.independent)
        out[st.name] = ok
    return out


def execute(plan: BuildPlan, stamps_root: Path, logs_root: Path, *, console: Console | None = None,
            live: bool = True) -> Execution:
    """Run the plan's stages in order, skipping those whose stamp matches; then `plan.finish`."""
    console = console or Console(stderr=True)
    stamps = Stamps(stamps_root, plan.build_id)
    log_dir = logs_root / plan.build_id
    log_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, StageResult] = {}
    dirty = False
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn(),
               TextColumn("[dim]{task.fields[last]}"))
    with Progress(*columns, console=console, transient=False, disable=not live) as progress:
        for stage in plan.stages:
            stamp = None if dirty else stamps.read(stage)
            if stamp is not None:
                results[stage.name] = StageResult(stage.name, stage.key, True, stamp.get("seconds", 0.0),
                                                  stamp.get("info", {}))
                console.print(f"[green]skip[/] {plan.build_id} {stage.name} (inputs unchanged, "
                              f"key {stage.key[:12]}, took {stamp.get('seconds', 0):.0f}s when built)")
                continue
            dirty = dirty or not stage.independent
            stamps.remove(stage)
            for out in stage.outputs:
                remove_path(Path(out))
            log_path = log_dir / f"{stage.name}.log"
            log_path.unlink(missing_ok=True)
            task = progress.add_task(f"{plan.build_id}: {stage.title}", total=None, last="")

            def on_line(line: str, _task=task) -> None:
                progress.update(_task, last=line[-90:])

            runner = Runner(log_path, on_line=on_line)
            ctx = StageContext(runner=runner, info={}, results=results)
            start = time.monotonic()
            try:
                for action in stage.actions:
                    if isinstance(action, Cmd):
                        for attempt in range(action.retries + 1):
                            try:
                                rc = runner.run(action.argv, env=action.env, cwd=action.cwd,
                                                timeout=action.timeout, ok_codes=action.ok_codes, nice=action.nice)
                                break
                            except CommandError as err:
                                if attempt == action.retries:
                                    raise
                                ctx.info.setdefault("retried", []).append(
                                    {"command": format_command(action.argv), "exit_code": err.returncode})
                                with log_path.open("a") as log:
                                    log.write(f"RETRY: attempt {attempt + 2} of {action.retries + 1}\n")
                        if rc != 0:  # accepted through ok_codes (e.g. a training run with a failing test)
                            ctx.info.setdefault("nonzero_exits", []).append(
                                {"command": format_command(action.argv), "exit_code": rc})
                    else:
                        with log_path.open("a") as log:
                            log.write(f"STEP: {action.what}\n")
                        action.fn(ctx)
            except HostpgoError as e:
                progress.update(task, description=f"[red]{plan.build_id}: {stage.title} FAILED", last="")
                progress.stop_task(task)
                failed = HostpgoError(f"stage '{stage.name}' of {plan.build_id} failed (log: {log_path}):\n{e}")
                failed.exit_code = e.exit_code  # a failed tool stays exit 4, bad input exit 2
                raise failed from e
            seconds = time.monotonic() - start
            stamps.write(stage, seconds, ctx.info)
            progress.update(task, description=f"[green]{plan.build_id}: {stage.title} done", last="")
            progress.stop_task(task)
            if not live:
                console.print(f"[green]done[/] {plan.build_id} {stage.name} in {seconds:.0f}s (log {log_path})")
            results[stage.name] = StageResult(stage.name, stage.key, False, seconds, ctx.info)
    execution = Execution(plan, results)
    if plan.finish is not None:
        plan.finish(execution)
    return execution


def render_plan(plan: BuildPlan, skip: dict[str, bool] | None = None) -> str:
    """Plain-text rendering of the whole plan (what --dry-run prints)."""
    lines = [f"plan {plan.build_id}"]
    for k, v in plan.summary.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v, default=str)
        lines.append(f"  {k}: {v}")
    for n in plan.notes:
        lines.append(f"  note: {n}")
    for i, st in enumerate(plan.stages, 1):
        status = "" if skip is None else ("  [would skip: stamp matches]" if skip.get(st.name) else "  [would run]")
        lines.append(f"\n{i}. {st.name}: {st.title}  key={st.key[:12]}{status}")
        for f in st.flags:
            why = f"    # {f.why}" if f.why else ""
            lines.append(f"     {f.channel:<15} {f.name} = {f.value}{why}")
        for n in st.notes:
            lines.append(f"     note: {n}")
        for a in st.actions:
            lines.append(f"     $ {a.describe()}")
    return "\n".join(lines)
