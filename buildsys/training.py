"""Training tasks: named, versioned commands run on the instrumented build; their digests stamp the profile data.

A task is a TOML file profiles/tasks/NAME.toml:

    version = 1                      # bump when what the task runs changes meaning
    description = "..."
    kind = "interpreter"             # `interpreter`: argv after the instrumented python
                                     # `command`: argv as given (placeholders below)
    argv = ["-m", "test", "--pgo"]
    venv = false                     # true: make a venv from the instrumented interpreter first
    venv_install = []                # pip arguments run in that venv before the task
    cwd = "{repo}"                   # optional working directory
    env = {}                         # extra environment
    timeout = 3600                   # seconds
    ok_codes = [0]                   # exit codes that count as success

Placeholders in argv/cwd/env/venv_install: {python} (the interpreter the task runs with: the
venv's when venv = true), {prefix} (instrumented install prefix), {repo} (the hostpgo checkout),
{venv}. Later issues add runtime workloads as kind "command" tasks, for example
argv = ["{python}", "-m", "runtime", "workload", "decode"] with venv = true.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import TaskError
from .paths import TASKS_DIR

KINDS = ("interpreter", "command")
_KEYS = {"version": int, "description": str, "kind": str, "argv": list, "venv": bool, "venv_install": list,
         "cwd": str, "env": dict, "timeout": int, "ok_codes": list}


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
    source: str = ""
    """File the task was read from (not part of the digest)."""

    def digest(self) -> str:
        """sha256 over everything that defines what the task runs (not where it was read from)."""
        d = asdict(self)
        d.pop("source")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def command(self, *, python: str, prefix: str, repo: str, venv: str = "") -> tuple[list[str], dict[str, str], str | None]:
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
    for req in ("version", "kind", "argv"):
        if req not in data:
            raise TaskError(f"{where}: missing key '{req}'")
    if data["kind"] not in KINDS:
        raise TaskError(f"{where}: key 'kind' has value {data['kind']!r}; allowed values: {', '.join(KINDS)}")
    if not data["argv"] or not all(isinstance(a, str) for a in data["argv"]):
        raise TaskError(f"{where}: key 'argv' must be a non-empty list of strings")
    return TrainingTask(
        name=name, version=data["version"], kind=data["kind"], argv=tuple(data["argv"]),
        description=data.get("description", ""), venv=data.get("venv", False),
        venv_install=tuple(data.get("venv_install", ())), cwd=data.get("cwd"),
        env=tuple(sorted((str(k), str(v)) for k, v in data.get("env", {}).items())),
        timeout=data.get("timeout", 3600), ok_codes=tuple(data.get("ok_codes", [0])), source=where)


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
