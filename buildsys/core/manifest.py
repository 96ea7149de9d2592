"""hostpgo-manifest.json: the versioned record written into every install prefix."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hostpgo import fsutil

from ..errors import HostpgoError

if TYPE_CHECKING:
    from .stages import Execution

SCHEMA = "hostpgo-manifest/1"
FILE_NAME = "hostpgo-manifest.json"
REQUIRED = {"schema": str, "build_id": str, "target": str, "version": str, "prefix": str, "profile": dict,
            "toolchain": dict, "source": dict, "patches": list, "flags": dict, "training": list,
            "profile_data": (dict, type(None)), "stages": dict, "written": str}


def tree_digest(root: Path, skip_dirs: tuple[str, ...] = ()) -> str:
    """sha256 over the relative paths and contents of every file below `root` (not inside a `skip_dirs` name)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and not set(p.relative_to(root).parts) & set(skip_dirs):
            h.update(str(p.relative_to(root)).encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def validate(doc: dict[str, Any]) -> None:
    """Refuse to write a manifest that lacks a field or has one of the wrong type."""
    for key, kind in REQUIRED.items():
        if key not in doc:
            raise HostpgoError(f"manifest is missing '{key}'")
        if not isinstance(doc[key], kind):
            raise HostpgoError(f"manifest field '{key}' has type {type(doc[key]).__name__}")
    if doc["schema"] != SCHEMA:
        raise HostpgoError(f"manifest schema {doc['schema']!r}, expected {SCHEMA!r}")
    for name, st in doc["stages"].items():
        if not {"seconds", "skipped", "key"} <= set(st):
            raise HostpgoError(f"manifest stage '{name}' lacks seconds/skipped/key")


@dataclass(frozen=True)
class BuildRecord:
    """What a target's inputs say about a build, for its manifest (every target makes one; see
    buildsys/targets/)."""

    target: str
    version: str
    profile: dict[str, Any]
    """The resolved profile (Profile.to_dict())."""
    toolchain: dict[str, Any]
    """Compiler identity and the host."""
    source: dict[str, Any]
    """file, sha256, url of the pinned archive (or the tree a user pointed at)."""
    patches: list[dict[str, str]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    """Target-specific top-level fields (CPython: `allocator`)."""


def build(execution: Execution, inp: Any, prefix: Path, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest of one install prefix: `inp.record()` (the target's inputs) plus what the stages did."""
    rec: BuildRecord = inp.record()
    plan = execution.plan
    res = execution.results
    instrumented = prefix.name.endswith("-instrumented")
    stage_names = [s.name for s in plan.stages]
    if instrumented:
        stage_names = stage_names[:stage_names.index("install-instrumented") + 1]
    merge = res.get("merge") or res.get("profile-data")
    profile_data = None
    if merge is not None and not instrumented:
        side = merge.info.get("sidecar") or {}
        profile_data = {"path": merge.info.get("profile_data"), "sha256": merge.info.get("profile_data_sha256"),
                        "raw_profiles": merge.info.get("raw_profiles", merge.info.get("gcda_files",
                                                                                       side.get("raw_profiles"))),
                        "reused": bool(merge.info.get("reused")),
                        **({"made_by": side.get("build_id"), "created": side.get("created")} if side else {})}
    checks = {n: res[n].info["workloads"] for n in ("train", "verify")
              if n in res and res[n].info.get("workloads") and not (instrumented and n == "verify")}
    src = res.get("source")
    return {
        "schema": SCHEMA,
        "build_id": plan.build_id + ("-instrumented" if instrumented else ""),
        "target": rec.target,
        "version": rec.version,
        "prefix": str(prefix),
        "profile": rec.profile,
        "toolchain": rec.toolchain,
        "source": {**rec.source, "origin": src.info.get("origin") if src else None},
        "patches": rec.patches,
        "flags": {s.name: [{"channel": f.channel, "name": f.name, "value": f.value, "why": f.why}
                            for f in s.flags]
                  for s in plan.stages if s.name in stage_names and s.flags},
        "notes": list(plan.notes),
        "training": [] if instrumented else tasks,
        "profile_data": profile_data,
        "workload_runs": checks,
        **rec.extra,
        "stages": {n: {"seconds": round(res[n].seconds, 1), "skipped": res[n].skipped, "key": res[n].key,
                       **{k: res[n].info[k] for k in ("nonzero_exits", "retried") if res[n].info.get(k)}}
                   for n in stage_names if n in res},
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write(prefix: Path, doc: dict[str, Any]) -> Path:
    validate(doc)
    return fsutil.write_json(prefix / FILE_NAME, doc)


def read(prefix: Path) -> dict[str, Any]:
    path = prefix / FILE_NAME
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise HostpgoError(f"cannot read {path}: {e}") from None
    validate(doc)
    return doc


def write_for_execution(execution: Execution, inp: Any, prefixes: list[Path],
                        tasks: list[dict[str, Any]]) -> None:
    for prefix in prefixes:
        if prefix.is_dir():
            write(prefix, build(execution, inp, prefix, tasks))
