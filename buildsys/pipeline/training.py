"""Training tasks: named, versioned commands run on the instrumented build; their digests stamp the profile data.

A task is a TOML file profiles/tasks/NAME.toml:

    version = 1                      # bump when what the task runs changes meaning
    description = "..."
    kind = "interpreter"             # `interpreter`: argv after the instrumented python
                                     # `command`: argv as given (placeholders below)
                                     # `workloads`: the bundled runtime's named workloads (below)
    argv = ["-m", "test", "--pgo"]   # interpreter and command tasks
    venv = false                     # true: make a venv from the instrumented interpreter first
    venv_install = []                # pip arguments run in that venv before the task (kind workloads too:
                                     # e.g. ray for the Ray executor's workload)
    cwd = "{repo}"                   # optional working directory
    env = {}                         # extra environment
    timeout = 3600                   # seconds
    ok_codes = [0]                   # exit codes that count as success

Placeholders in argv/cwd/env/venv_install: {python} (the interpreter the task runs with: the
venv's when venv = true), {prefix} (instrumented install prefix), {repo} (the hostpgo checkout),
{venv}.

A `workloads` task runs `{python} -m runtime workload NAME --json [--steps N] [--check-golden]` for
each name, in a venv of the instrumented interpreter that sees the runtime's dependencies (installed
once per requirement set into the work area, see cpython.py) and this checkout:

    kind = "workloads"
    workloads = ["decode-b1", "decode-b8"]   # names known to `python -m runtime workload --list`
    steps = 0                        # 0: each workload's default length (its golden digest applies)
    check_golden = true              # a run whose token digest differs from the pinned one fails

Its digest also covers the runtime's source (runtime/*.py): a change to the engine, the
scheduler or a workload's request stream changes what the interpreter was trained on.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hostpgo import fsutil
from hostpgo.runner import format_command

from ..core.paths import REPO_ROOT, TASKS_DIR
from ..core.stages import Call, Cmd, StageContext
from ..errors import HostpgoError, TaskError

KINDS = ("interpreter", "command", "workloads")
_KEYS = {"version": int, "description": str, "kind": str, "argv": list, "venv": bool, "venv_install": list,
         "cwd": str, "env": dict, "timeout": int, "ok_codes": list, "workloads": list, "steps": int,
         "check_golden": bool}
RUNTIME_DIR = REPO_ROOT / "runtime"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def runtime_digest(root: Path = RUNTIME_DIR) -> str:
    """sha256 over the runtime's Python and Cython sources (relative path and content of each): the .pyx is the
    compiled twin of the host hot path (runtime/_hostpath.pyx), so a change to it is a change to what trains."""
    h = hashlib.sha256()
    for path in sorted(p for pattern in ("*.py", "*.pyx") for p in root.rglob(pattern)):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


@dataclass(frozen=True)
class TrainingTask:
    name: str
    version: int
    kind: str
    argv: tuple[str, ...]
    description: str = ""
    venv: bool = False
    venv_install: tuple[str, ...] = ()
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    timeout: int = 3600
    ok_codes: tuple[int, ...] = (0,)
    workloads: tuple[str, ...] = ()
    """Runtime workload names (kind `workloads`)."""
    steps: int = 0
    """Engine steps per workload (kind `workloads`); 0 = each workload's default."""
    check_golden: bool = True
    """Kind `workloads`: fail a run whose token digest is not the pinned one."""
    source: str = ""
    """File the task was read from (not part of the digest)."""

    def digest(self) -> str:
        """sha256 over everything that defines what the task runs (not where it was read from)."""
        d = asdict(self)
        d.pop("source")
        if self.kind == "workloads":
            d["runtime_sources"] = runtime_digest()
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def commands(self, *, python: str, prefix: str, repo: str,
                 venv: str = "") -> list[tuple[list[str], dict[str, str], str | None]]:
        """Every (argv, env, cwd) the task runs: one for interpreter/command tasks, one per workload."""
        if self.kind != "workloads":
            return [self.command(python=python, prefix=prefix, repo=repo, venv=venv)]
        extra = ([f"--steps={self.steps}"] if self.steps else []) + (["--check-golden"] if self.check_golden else [])
        env = {k: v.format(python=python, prefix=prefix, repo=repo, venv=venv) for k, v in self.env}
        return [([python, "-m", "runtime", "workload", name, "--json", *extra], env, repo) for name in self.workloads]

    def command(self, *, python: str, prefix: str, repo: str,
                venv: str = "") -> tuple[list[str], dict[str, str], str | None]:
        """argv, env and cwd with placeholders filled in."""
        subst = {"python": python, "prefix": prefix, "repo": repo, "venv": venv}
        argv = [a.format(**subst) for a in self.argv]
        if self.kind == "interpreter":
            argv = [python, *argv]
        env = {k: v.format(**subst) for k, v in self.env}
        cwd = self.cwd.format(**subst) if self.cwd else None
        return argv, env, cwd


def parse_task(name: str, data: Mapping[str, Any], where: str) -> TrainingTask:
    for key, value in data.items():
        if key not in _KEYS:
            raise TaskError(f"{where}: unknown key '{key}'; allowed: {', '.join(_KEYS)}")
        if not isinstance(value, _KEYS[key]) or (_KEYS[key] is int and isinstance(value, bool)):
            raise TaskError(f"{where}: key '{key}' must be {_KEYS[key].__name__}, got {value!r}")
    for req in ("version", "kind"):
        if req not in data:
            raise TaskError(f"{where}: missing key '{req}'")
    if data["kind"] not in KINDS:
        raise TaskError(f"{where}: key 'kind' has value {data['kind']!r}; allowed values: {', '.join(KINDS)}")
    if data["kind"] == "workloads":
        names = data.get("workloads")
        if not names or not all(isinstance(n, str) and NAME_RE.match(n) for n in names):
            raise TaskError(f"{where}: a task of kind 'workloads' needs key 'workloads', a non-empty list of "
                            "workload names (see `python -m runtime workload --list`)")
        for key in ("argv", "venv"):
            if key in data:
                raise TaskError(f"{where}: key '{key}' does not apply to kind 'workloads' (it always runs "
                                "`python -m runtime workload NAME` in a venv of the instrumented interpreter; "
                                "`venv_install` adds packages to that venv)")
        if data.get("steps", 0) < 0:
            raise TaskError(f"{where}: key 'steps' must be >= 0 (0 = each workload's default), got {data['steps']}")
    else:
        for key in ("workloads", "steps", "check_golden"):
            if key in data:
                raise TaskError(f"{where}: key '{key}' applies only to kind 'workloads'")
        if not data.get("argv") or not all(isinstance(a, str) for a in data["argv"]):
            raise TaskError(f"{where}: key 'argv' must be a non-empty list of strings")
    return TrainingTask(
        name=name, version=data["version"], kind=data["kind"], argv=tuple(data.get("argv", ())),
        description=data.get("description", ""), venv=data.get("venv", data["kind"] == "workloads"),
        venv_install=tuple(data.get("venv_install", ())), cwd=data.get("cwd"),
        env=tuple(sorted((str(k), str(v)) for k, v in data.get("env", {}).items())),
        timeout=data.get("timeout", 3600), ok_codes=tuple(data.get("ok_codes", [0])),
        workloads=tuple(data.get("workloads", ())), steps=data.get("steps", 0),
        check_golden=data.get("check_golden", True), source=where)


def registry(tasks_dir: Path = TASKS_DIR) -> dict[str, TrainingTask]:
    """Every task in profiles/tasks/*.toml, by name (file stem)."""
    out = {}
    for path in sorted(tasks_dir.glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise TaskError(f"{path}: not valid TOML: {e}") from None
        out[path.stem] = parse_task(path.stem, data, str(path))
    return out


def resolve(names: tuple[str, ...], tasks_dir: Path = TASKS_DIR) -> tuple[TrainingTask, ...]:
    reg = registry(tasks_dir)
    out = []
    for n in names:
        if n not in reg:
            raise TaskError(f"unknown training task '{n}' (key pgo.tasks); known tasks in {tasks_dir}: "
                            f"{', '.join(sorted(reg)) or '(none)'}")
        out.append(reg[n])
    return tuple(out)


def tasks_digest(tasks: tuple[TrainingTask, ...]) -> str:
    return hashlib.sha256("".join(f"{t.name}:{t.digest()}" for t in tasks).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Running tasks: the actions of a training stage (PGO's train, BOLT's bolt-train).

def last_json(lines: list[str]) -> dict | None:
    """The last JSON object printed (indented, starting with a line `{`) in a command's output."""
    starts = [i for i, ln in enumerate(lines) if ln.rstrip() == "{"]
    for start in reversed(starts):
        ends = [j for j in range(start, len(lines)) if lines[j].rstrip() == "}"]
        if ends:
            try:
                return json.loads("\n".join(lines[start:ends[0] + 1]))
            except ValueError:
                continue
    return None


def run_workload(argv: list[str], env: dict[str, str], cwd: str | None, timeout: float, where: str,
                 expect_host_path: str | None = None):
    """Call body: run one runtime workload, keep its record (digest, golden match, which host hot path ran) in the
    stage info. `expect_host_path` ("cython" or "python"): fail unless the record's `host_path` is that one (a
    build of runtime._hostpath must be trained and verified on the compiled path, not the reference)."""
    def fn(ctx: StageContext) -> None:
        lines: list[str] = []
        rc = ctx.runner.run(argv, env=env, cwd=Path(cwd) if cwd else None, timeout=timeout, ok_codes=(0, 1),
                            nice=True, collect=lines)
        rec = last_json(lines) or {}
        entry = {k: rec.get(k) for k in ("name", "version", "steps", "seed", "token_digest", "golden_digest",
                                          "golden_match", "tokens", "dispatches_per_token", "host_path",
                                          "host_path_reason", "kernel_level")}
        entry["exit_code"] = rc
        ctx.info.setdefault("workloads", []).append(entry)
        name = argv[argv.index("workload") + 1] if "workload" in argv else argv[-1]
        if expect_host_path is not None and rec and rec.get("host_path") != expect_host_path:
            raise HostpgoError(f"{where}: workload {name} ran the {rec.get('host_path')!r} host hot path, not "
                               f"{expect_host_path!r} ({rec.get('host_path_reason')})")
        if rc != 0:
            if not rec:  # exit 1 without a record: the workload crashed, it did not produce other tokens
                tail = "\n".join(lines[-5:])
                raise HostpgoError(f"{where}: workload {name} failed with exit code {rc} before printing its "
                                   f"record (log: {ctx.runner.log_path}):\n{tail}")
            if rec.get("golden_digest") is None:
                raise HostpgoError(f"{where}: workload {name} has no token digest pinned for this CPU's MindSpore "
                                   f"kernel level {rec.get('kernel_level')!r} (this run gave "
                                   f"{rec.get('token_digest')}), so it cannot be checked here; pin the stock stack's "
                                   "digest for that level in runtime/workloads.py, or leave the workload out of "
                                   "the profile's verify.workloads")
            raise HostpgoError(f"{where}: workload {name} did not reproduce its pinned token digest "
                               f"(got {rec.get('token_digest')}, pinned {rec.get('golden_digest')}); "
                               "an interpreter that changes results is not installed")
    return fn


def task_actions(tasks: Sequence[TrainingTask], *, base_python: str, prefix: str, venv_dir: Path,
                 env: dict[str, str], runtime_env: dict[str, str], pth: Path | None, pth_dirs: Sequence[object],
                 wrap: Callable[[list[str]], list[str]] = list) -> list[Cmd | Call]:
    """The actions that run training tasks on an interpreter: PGO training, and BOLT's on the same tasks.

    Tasks with `venv = true` share one venv made from `base_python`; `pth` (when given) makes the runtime's
    dependencies and this checkout importable there. `wrap` may prefix each task command (perf record).
    """
    actions: list[Cmd | Call] = []
    made_venv = False
    for t in tasks:
        python = base_python
        if t.venv:
            python = str(venv_dir / "bin" / "python")
            if not made_venv:
                actions.append(Cmd((base_python, "-m", "venv", "--clear", str(venv_dir)), env=env, timeout=1800))
                if pth is not None:
                    text = "".join(f"{d}\n" for d in pth_dirs)
                    actions.append(Call(f"write {pth}: {' and '.join(str(d) for d in pth_dirs)}",
                                        lambda ctx, pth=pth, text=text: fsutil.write_text(pth, text)))
                made_venv = True
            if t.venv_install:
                subst = dict(python=python, prefix=prefix, repo=str(REPO_ROOT), venv=str(venv_dir))
                actions.append(Cmd((python, "-m", "pip", "install", *[a.format(**subst) for a in t.venv_install]),
                                   env=env, timeout=3600))
        for argv, tenv, cwd in t.commands(python=python, prefix=prefix, repo=str(REPO_ROOT), venv=str(venv_dir)):
            argv = wrap(argv)
            if t.kind == "workloads":
                wenv = {**env, **runtime_env, **tenv}
                actions.append(Call(f"{format_command(argv, wenv, Path(cwd))} (record kept)",
                                    run_workload(argv, wenv, cwd, t.timeout, f"training task {t.name}")))
            else:
                actions.append(Cmd(tuple(argv), env={**env, **tenv}, cwd=Path(cwd) if cwd else None,
                                   timeout=t.timeout, ok_codes=t.ok_codes))
    return actions
