"""Search build options (compiler, LTO, -march, inlining, alignment, BOLT, allocator, per-file flags) within a
time budget and keep the winner as a build profile: `python -m perf autotune`.

Plan, then run. The plan (pure, `--dry-run` prints it) turns the search space (profiles/search/autotune.toml)
into candidates over the base profile (`workload-pgo-lto` by default): one dimension at a time first, in the
space's priority order, each candidate a profile file `<run>/candidates/<id>.toml` that `extends` the base, so
its file stem gives it a build id of its own. The estimate uses the base build's own stage times (its
manifest); candidates that do not fit the budget are dropped from the end of the longest dimension (on a tie
the later dimension loses one) and listed. The run:

1. Base: built if it is not installed (`python -m buildsys build cpython --profile BASE`); its merged profile
   data (the manifest's `profile_data`, kept in the profile store .hostpgo/profiles/) is passed with
   `--profile-data` to every candidate that `buildsys.pipeline.pgo.profile_data_reusable` accepts; any other
   candidate trains itself and the log says why. A build whose verify stage (CPython's test subset and every
   golden digest) fails is recorded as rejected with its log, and never measured.
2. Screening: exact instruction counts per unit of work (`python -m perf counters --backend cachegrind`) on
   the space's `screen` targets; a candidate survives when the geometric mean of its count ratios to the base
   is below 1 - `threshold` - the noise floor. The floor comes from counting the base's runtime targets twice
   (`base_repeat`; their MindSpore threads make a whole-process count vary between runs, the interpreter-only
   targets repeat exactly): the mean over the screening targets of each one's relative spread, the largest
   error that spread can put in the geometric mean.
3. Combination: the best survivor of each dimension, combined into one candidate (a winner whose `requires`
   no longer holds in the combination is left out of it), built and screened the same way.
4. Confirmation: the top `--finalists` survivors by counts in one interleaved `python -m perf bench` run
   (latency on the `confirm` targets plus the pyperformance guard) beside the base, Debian's python3.11 and the
   starting points (`gcc-pgo-lto`, `native`: built if missing). The winner follows the space's `winner` rule
   (WINNER_RULES): `latency` (default), the finalist with the lowest latency geometric mean that is
   significantly below the base's (perf.compare's geometric-mean test) and not significantly slower on the
   guard; `counts`, for a host whose latency noise hides the few percent a build option moves, the finalist with
   the fewest instructions whose latency or guard geometric mean is significantly faster and which is
   significantly slower on no confirmation target and not on the guard.

Every finished step is one line of `<run>/autotune.jsonl`; `--resume RUN` rereads it and neither rebuilds nor
re-measures what it holds (an interrupted run resumes). Outputs: `best.toml` (the winner's set items over the
base, its measured gains in its header), `autotune.md` and plots; `--write-profile` also copies best.toml to
profiles/.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from buildsys.core.paths import PROFILES_DIR, WorkArea
from buildsys.engine import SYSTEM_PYTHON
from buildsys.pipeline.pgo import profile_data_reusable
from buildsys.toolchain import profile as profmod
from hostpgo import fsutil
from hostpgo.errors import CommandError, HostpgoError, InputError
from hostpgo.layered import Key, Loader, Origin, fmt
from hostpgo.runner import Runner

from .catalog import TARGETS
from .errors import UncountableError
from .tune import drop_longest_first, unique_path
from .workspace import new_run_dir, safe_name

LOG_SCHEMA = "hostpgo-autotune/1"
LOG_FILE = "autotune.jsonl"
DEFAULT_SPACE = PROFILES_DIR / "search" / "autotune.toml"
STRATEGY = ("one dimension at a time against the base, screened by exact instruction counts; the per-dimension "
            "winners combined; the top finalists confirmed by one interleaved latency run and the pyperformance "
            "guard beside the base, Debian's interpreter and the starting points")
TRAINING_STAGES = ("configure-instrumented", "build-instrumented", "install-instrumented", "train", "merge")
BUILD_STAGES = ("configure", "build", "verify", "install")
ASSUMED_BUILD_S = 722.2
"""An optimized build + verify + install when no base manifest says (configure 56.8 + build 559.4 + verify 76.8
+ install 29.2 s, the recorded stages of a workload-pgo-lto-tcmalloc build on this 2-core machine)."""
ASSUMED_TRAIN_S = 622.1
"""Instrumented build + training + merge when no base manifest says (121.0 + 235.3 + 75.1 + 190.3 + 0.4 s, the
same recorded build)."""
ASSUMED_COUNT_S = {"runtime": 180.0, "interpreter": 10.0}
"""Wall seconds of one cachegrind count of one target (two valgrind runs, two at a time on this 2-core machine)
until the base's count is timed: measured once, from the file times of the first real search's base count here
(autotune-20261201: decode-b1 177 s, pure-python and pure-dispatch about 8 s each, after a 30 s venv)."""
ASSUMED_VENV_S = 35.0
"""Preparing one interpreter's measurement venv from the wheelhouse: measured here (30 s for the base's count
venv, about 32 s each for the four subjects of confirmation autotune-20261201-b/confirm-4953516f)."""
ASSUMED_CONFIRM_TARGET_S = 15.0
"""One subject on one target in the quick interleaved latency run (4 rounds of one pyperf process): from the
full run of autotune-20261201-b (230 s for 4 subjects x 3 targets at 6 rounds, 19 s each) over
FULL_LATENCY_FACTOR, rounded up."""
FULL_LATENCY_FACTOR = 1.5
"""A full latency run (6 rounds x 5 values) against a quick one (4 x 3), per subject and target: an assumption
(each round starts one pyperf process per subject and target, and a runtime target's process loads the model)."""
ASSUMED_GUARD_S = 90.0
"""One subject through the pyperformance guard subset with --fast: measured here (352 s for the 4 subjects of
autotune-20261201-b's confirmation)."""
BUILD_TIMEOUT = 6 * 3600.0
MEASURE_TIMEOUT = 12 * 3600.0
REQUIRE_RE = re.compile(r"^(machine=(x86_64|aarch64)|family=(clang|gcc|bisheng)|compiler=(clang|gcc|bisheng)"
                        r"|shared|static|pgo)$")
STAGE_FAILED_RE = re.compile(r"stage '([\w.-]+)' of (\S+) failed \(log: ([^)]+)\)")


# ------------------------------------------------------------------------------------------ the space

@dataclass(frozen=True)
class Item:
    """One build-profile assignment of a choice: `section.key=value`, or `section.key+=[...]` (appended to the
    base's list)."""

    section: str
    """The profile section (`optimize`, `bolt.stock`)."""
    key: str
    """The key in it."""
    value: Any
    """The value as the space file writes it (TOML), once the profile loader has checked it."""
    append: bool = False
    """Given with '+=': the value's entries go after the base's list instead of replacing it."""

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.key}"


@dataclass(frozen=True)
class Choice:
    """One value of a dimension: a label and its items."""

    label: str
    """Its name within the dimension (unique there)."""
    sets: tuple[str, ...]
    """The items as the space file writes them."""
    items: tuple[Item, ...]
    """The same, parsed and checked by the profile loader."""
    requires: tuple[str, ...] = ()
    """Conditions (REQUIRE_RE) on the host and the candidate's resolved profile."""


@dataclass(frozen=True)
class Dimension:
    """One build option searched, its choices in priority order."""

    name: str
    """Names its candidates (`at-<name>-<label>-...`) and the combination's parts."""
    doc: str
    """What the dimension varies, for people reading the space."""
    choices: tuple[Choice, ...]
    """In priority order: under the budget the last ones go first."""
    requires: tuple[str, ...] = ()
    """Conditions every choice of the dimension needs (added to each choice's own)."""
    priority: int = 0
    """Lower is searched (and kept under the budget) first; the file's order breaks ties."""


@dataclass(frozen=True)
class SearchSettings:
    """The space file's [search] table."""

    base: str
    """The profile every candidate extends and is measured against."""
    screen: tuple[str, ...]
    """perf targets counted under cachegrind for screening."""
    threshold: float
    """A candidate must lower the geometric mean of count ratios below 1 - threshold."""
    finalists: int
    """How many screened candidates the latency run confirms."""
    confirm: tuple[str, ...]
    """perf targets of the finalists' interleaved latency run."""
    starting_points: tuple[str, ...]
    """Profiles measured beside the finalists (built if missing)."""
    common: tuple[str, ...]
    """Items added to every candidate (not to the base, not to best.toml)."""
    confirm_quick: bool = True
    """The confirmation's latency run with perf bench --quick (4 rounds x 3 values), else at its full settings
    (6 x 5); the guard is pyperformance --fast either way."""
    winner: str = "latency"
    """How the confirmation picks the winner: a WINNER_RULES key."""
    base_repeat: bool = True
    """Count the base's runtime screening targets a second time; their spread is the screening's noise floor."""


@dataclass(frozen=True)
class Space:
    """A search-space file, loaded and checked."""

    path: Path
    """The file (resolved)."""
    settings: SearchSettings
    dimensions: tuple[Dimension, ...]
    """Sorted by priority, then file order."""
    common: tuple[Item, ...] = ()
    """[search] common, parsed."""


WINNER_RULES = {
    "latency": "the latency geometric mean over the confirmation targets significantly below the base's, the guard "
               "not significantly slower; the lowest latency wins",
    "counts": "fewer exact instructions (the screening), the latency or the guard geometric mean significantly "
              "faster, no confirmation target and not the guard significantly slower; the fewest instructions "
              "win",
}
"""The confirmation's winner rules, by name (the space's [search] winner, --winner)."""


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and v > 0


def _targets_ok(v: list[str]) -> bool:
    return bool(v) and all(t in TARGETS for t in v)


SEARCH_SCHEMA: dict[str, dict[str, Key]] = {"search": {
    "base": Key(str, "workload-pgo-lto", "the base profile (a name from profiles/ or a path)"),
    "screen": Key(list, ["pure-python", "pure-dispatch", "decode-b1", "decode-b1-graph"],
                  "perf targets whose instruction counts screen the candidates", check=_targets_ok,
                  check_doc="a perf target name (python -m perf bench --help lists them)"),
    "threshold": Key((int, float), 0.005, "relative lowering of the count geometric mean a candidate needs",
                     check=lambda v: 0 <= v < 1, check_doc="a number from 0 to below 1"),
    "finalists": Key(int, 3, "candidates confirmed by the latency run", check=_positive_int,
                     check_doc="an integer > 0"),
    "confirm": Key(list, ["op-dispatch", "decode-b1", "decode-b8", "decode-b8-graph"],
                   "perf targets of the finalists' interleaved latency run", check=_targets_ok,
                   check_doc="a perf target name"),
    "starting_points": Key(list, ["gcc-pgo-lto", "native"], "profiles measured beside the finalists"),
    "common": Key(list, [], "build-profile items added to every candidate"),
    "confirm_quick": Key(bool, True, "the confirmation's latency run with perf bench --quick (false: its full "
                         "settings, 6 rounds x 5 values, for a noisy machine)"),
    "winner": Key(str, "latency", "how the confirmation picks the winner", check=lambda v: v in WINNER_RULES,
                  check_doc=" or ".join(WINNER_RULES)),
    "base_repeat": Key(bool, True, "count the base's runtime screening targets twice: their spread raises the "
                       "screening threshold (the noise floor)"),
}}
SEARCH_LOADER = Loader(SEARCH_SCHEMA, what="search space", find=lambda ref, rel: Path(ref), error=InputError)
"""The one layered loader, over the [search] table's schema: reads the file and checks its keys."""
SPACE_KEYS = {"description", "search", "dimension"}
DIMENSION_KEYS = {"name", "doc", "choices", "requires", "priority"}
CHOICE_KEYS = {"label", "set", "requires"}


def _profile_loader() -> Loader:
    return profmod.loader()


def parse_item(text: str, origin: Origin, loader: Loader | None = None) -> Item:
    """`section.key=value` or `section.key+=[...]`, checked by the build-profile loader (the parser `--set` goes
    through): an unknown key or a bad value is an InputError naming `origin` and the key."""
    loader = loader or _profile_loader()
    if not isinstance(text, str):
        raise InputError(f"{origin}: set item {text!r} is not a \"section.key=value\" string")
    append = False
    dotted, sep, raw = text.partition("=")
    if sep and dotted.endswith("+"):
        append, dotted = True, dotted[:-1]
    dotted = dotted.strip()
    s, k, value = loader.parse_assignment(f"{dotted}={raw}" if sep else text, origin)
    # Keep the value as written where it is TOML: the loader hands back a key's converted model form (e.g.
    # tuning.per_file's sorted (path, flags) pairs), which would not read back from a candidate profile file.
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        pass  # a bare word the loader accepts unquoted (optimize.lto=thin): its parsed value is the value
    if append and not isinstance(value, list):
        raise InputError(f"{origin}: {text!r}: '+=' appends to a list key; {dotted} is not one (use '=')")
    return Item(s, k, value, append)


def _requires(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and REQUIRE_RE.match(v) for v in value):
        raise InputError(f"{where}: 'requires' must be a list of conditions: machine=x86_64|aarch64, "
                         f"family=clang|gcc|bisheng, compiler=clang|gcc|bisheng, shared, static, pgo; got {value!r}")
    return tuple(value)


def load_space(path: Path) -> Space:
    """Read and check a search-space file; every error names the file, the dimension, the choice or the key."""
    path = Path(path)
    data = SEARCH_LOADER.read(path)
    unknown = set(data) - SPACE_KEYS
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
                         f"{', '.join(sorted(SPACE_KEYS))}")
    search = data.get("search", {})
    if not isinstance(search, dict):
        raise InputError(f"{path}: 'search' must be a table ([search])")
    SEARCH_LOADER.validate(str(path), {"search": search})
    values = {k: SEARCH_SCHEMA["search"][k].default_value() for k in SEARCH_SCHEMA["search"]} | search
    settings = SearchSettings(base=values["base"], screen=tuple(values["screen"]), threshold=float(values["threshold"]),
                              finalists=values["finalists"], confirm=tuple(values["confirm"]),
                              starting_points=tuple(values["starting_points"]), common=tuple(values["common"]),
                              confirm_quick=bool(values["confirm_quick"]), winner=values["winner"],
                              base_repeat=bool(values["base_repeat"]))
    loader = _profile_loader()
    common = tuple(parse_item(t, Origin("file", f"{path} [search] common"), loader) for t in settings.common)
    dims: list[tuple[int, int, Dimension]] = []
    raw_dims = data.get("dimension", [])
    if not isinstance(raw_dims, list) or not raw_dims:
        raise InputError(f"{path}: no [[dimension]] tables; each has name, doc, choices = [{{label, set}}, ...]")
    seen: set[str] = set()
    for i, d in enumerate(raw_dims):
        where = f"{path}: dimension[{i}]"
        if not isinstance(d, dict):
            raise InputError(f"{where}: must be a table ([[dimension]])")
        extra = set(d) - DIMENSION_KEYS
        if extra:
            raise InputError(f"{where}: unknown key(s) {', '.join(sorted(extra))}; allowed: "
                             f"{', '.join(sorted(DIMENSION_KEYS))}")
        name = d.get("name")
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_-]*$", name):
            raise InputError(f"{where}: needs a name of letters, digits, '_' and '-' (got {name!r})")
        if name in seen:
            raise InputError(f"{where}: dimension name {name!r} appears twice")
        seen.add(name)
        where = f"{path}: dimension {name!r}"
        priority = d.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InputError(f"{where}: 'priority' must be an integer (lower is searched first)")
        choices = d.get("choices")
        if not isinstance(choices, list) or not choices:
            raise InputError(f"{where}: needs at least one choice: choices = [{{ label = \"...\", set = [...] }}]")
        out: list[Choice] = []
        labels: set[str] = set()
        for c in choices:
            if not isinstance(c, dict) or set(c) - CHOICE_KEYS or not isinstance(c.get("label"), str) \
                    or not isinstance(c.get("set"), list) or not c.get("set"):
                raise InputError(f"{where}: a choice is {{ label = \"...\", set = [\"section.key=value\", ...], "
                                 f"requires = [...] }} with at least one set item; got {c!r}")
            if c["label"] in labels:
                raise InputError(f"{where}: choice label {c['label']!r} appears twice")
            labels.add(c["label"])
            origin = Origin("file", f"{path} dimension {name!r} choice {c['label']!r}")
            items = tuple(parse_item(t, origin, loader) for t in c["set"])
            out.append(Choice(c["label"], tuple(c["set"]), items,
                              _requires(f"{where} choice {c['label']!r}", c.get("requires"))))
        dims.append((priority, i, Dimension(name, str(d.get("doc", "")), tuple(out),
                                            _requires(where, d.get("requires")), priority)))
    return Space(path.resolve(), settings, tuple(dim for _, _, dim in sorted(dims, key=lambda t: t[:2])), common)


def parse_budget(text: str, flag: str = "--budget") -> float:
    """Seconds from `7200`, `90m`, `2h`, `1h30m` or `45s`; InputError naming the flag otherwise."""
    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text or "")
    if not text or not m or not any(m.groups()):
        raise InputError(f"{flag} {text!r}: give seconds (7200), minutes (90m), hours (2h) or 1h30m")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    total = h * 3600 + mi * 60 + s
    if not total > 0:
        raise InputError(f"{flag} {text!r}: must be above zero")
    return total


# ------------------------------------------------------------------------------------------ candidates

@dataclass(frozen=True)
class Candidate:
    """Base + `items`: one profile file `<run>/candidates/<id>.toml`."""

    id: str
    """The file stem, hence the build id `cpython-<version>-<id>`."""
    dimension: str
    """The dimension varied, or `combined`."""
    label: str
    """The choice's label (`+`-joined labels for the combination)."""
    items: tuple[Item, ...]
    """The choice's items (no common items); best.toml writes these."""
    requires: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()
    """For the combined candidate: the ids it combines."""

    @property
    def sets(self) -> list[str]:
        return [render_item(i) for i in self.items]


def toml_value(v: Any) -> str:
    """A value in TOML syntax (strings, numbers, booleans, lists, inline tables)."""
    if isinstance(v, bool) or isinstance(v, (int, float)):
        return fmt(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise InputError(f"cannot write {v!r} as a TOML value")


def render_item(item: Item) -> str:
    return f"{item.dotted}{'+=' if item.append else '='}{toml_value(item.value)}"


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def candidate_id(base: str, dimension: str, label: str, items: Sequence[Item], common: Sequence[Item]) -> str:
    """`at-<dimension>-<label>-<hash>`: the same base and items give the same id (and build) in any run."""
    h = _digest(base, [render_item(i) for i in (*common, *items)])[:6]
    slug = re.sub(r"[^a-z0-9]+", "-", f"{dimension}-{label}".lower()).strip("-")[:48]
    return f"at-{slug}-{h}"


def merge_items(groups: Sequence[Sequence[Item]]) -> tuple[tuple[Item, ...], list[str]]:
    """The items of several choices as one list: a table key (tuning.per_file) merges its entries, a list key
    given with '+=' concatenates, and any other key set twice keeps the first (higher-priority) value; the notes
    say what was kept."""
    out: dict[str, Item] = {}
    notes: list[str] = []
    for group in groups:
        for it in group:
            have = out.get(it.dotted)
            if have is None:
                out[it.dotted] = it
            elif isinstance(have.value, Mapping) and isinstance(it.value, Mapping):
                out[it.dotted] = replace(have, value={**have.value, **{k: v for k, v in it.value.items()
                                                                        if k not in have.value}})
            elif have.append and it.append:
                out[it.dotted] = replace(have, value=list(dict.fromkeys([*have.value, *it.value])))
            elif have.value != it.value:
                notes.append(f"{it.dotted}: kept {toml_value(have.value)}, not {toml_value(it.value)}")
    return tuple(out.values()), notes


def override_items(items: Sequence[Item], base_profile: profmod.Profile) -> list[str]:
    """The items as `--set` overrides over the base: a '+=' list is written out whole (the base's entries first)."""
    d = base_profile.to_dict()
    out = []
    for it in items:
        value = it.value
        if it.append:
            have = d.get(it.section.replace(".", "_"), {}).get(it.key, [])
            value = list(dict.fromkeys([*have, *it.value]))
        out.append(f"{it.dotted}={toml_value(value)}")
    return out


def write_candidate_file(dest: Path, cand: Candidate, *, base_ref: str, common: Sequence[Item],
                         base_profile: profmod.Profile, header: Sequence[str] = ()) -> Path:
    """`dest` (whose stem is the candidate's id): `extends` the base, then the common and the candidate's items
    by section. The file resolves through buildsys's own profile loader like any profile."""
    items, _ = merge_items([cand.items, common])
    sections: dict[str, list[str]] = {}
    for text in override_items(items, base_profile):
        dotted, _, value = text.partition("=")
        sect, _, key = dotted.rpartition(".")
        sections.setdefault(sect, []).append(f"{key} = {value}")
    lines = [f"# {h}" for h in header]
    what = f"autotune candidate {cand.id}: {cand.dimension}={cand.label} over {base_ref}"
    lines += [f"description = {json.dumps(what)}",
              f"extends = {json.dumps(base_ref)}", ""]
    for sect, body in sections.items():
        lines += [f"[{sect}]", *body, ""]
    return fsutil.write_text(dest, "\n".join(lines))


def resolved_values(ref: str, overrides: Sequence[str] = ()) -> dict:
    """Every key's value for the cpython target (the loader's own resolution, whatever the Profile model keeps):
    what tells a candidate from its base."""
    return profmod.loader().resolve(ref, environ={}, sets=overrides, scope=("targets", "cpython")).values


@dataclass(frozen=True)
class HostFacts:
    """What the plan's `requires` conditions read about this machine (probed once, passed in)."""

    machine: str
    """platform.machine(): x86_64 or aarch64."""
    families: tuple[str, ...]
    """Compiler families installed (buildsys.toolchain.detect)."""
    bisheng: str | None = None
    """The BiSheng compiler's path when one was detected."""

    @classmethod
    def detect(cls) -> HostFacts:
        from buildsys import toolchain

        tcs = toolchain.detect()
        bisheng = tcs.find("bisheng")
        return cls(platform.machine(), tuple(dict.fromkeys(c.family for c in tcs.compilers)),
                   bisheng.cc if bisheng else None)


def unmet(requires: Sequence[str], prof: profmod.Profile, host: HostFacts) -> str | None:
    """The first condition that does not hold, said plainly, or None."""
    for cond in requires:
        what, _, value = cond.partition("=")
        if what == "machine" and host.machine != value:
            return f"requires {cond}: this host is {host.machine}"
        if what == "family" and prof.toolchain.family != value:
            return f"requires {cond}: the candidate's compiler family is {prof.toolchain.family}"
        if what == "compiler" and value not in host.families:
            return f"requires {cond}: no {value} compiler is installed (found: {', '.join(host.families) or 'none'})"
        if cond == "shared" and not prof.optimize.shared:
            return "requires shared: the candidate links libpython statically (optimize.shared = false)"
        if cond == "static" and prof.optimize.shared:
            return "requires static: the candidate builds a shared libpython"
        if cond == "pgo" and prof.optimize.pgo != "on":
            return "requires pgo: the candidate has optimize.pgo = \"off\""
    return None


REBUILDS = (
    ("toolchain.", "everything, with another compiler (no object of the base is reusable)"),
    ("optimize.lto", "every object (another LTO mode) and the link"),
    ("optimize.arch", "every object (another instruction set) and the link"),
    ("optimize.opt", "every object and the link"),
    ("optimize.semantic_interposition", "every object and the link"),
    ("tuning.per_file", "the named objects (the rest from the compiler cache) and the link"),
    ("tuning.", "every object and the link"),
    ("flags.cflags", "every object and the link"),
    ("flags.ldflags", "the link only (objects from the compiler cache)"),
    ("optimize.linker", "the link"),
    ("optimize.allocator", "the link only (objects from the compiler cache; the allocator is linked ahead of libc)"),
    ("optimize.bolt", "the link (with relocations) plus BOLT's instrument, train and apply stages"),
    ("bolt.", "BOLT's apply stage (layout options)"),
)
"""What a key changes in the build, by key prefix (first match), for the plan."""


def rebuilds(items: Sequence[Item]) -> str:
    said = []
    for it in items:
        for prefix, text in REBUILDS:
            if it.dotted.startswith(prefix):
                if text not in said:
                    said.append(text)
                break
        else:
            said.append(f"what {it.dotted} changes")
    everything = [t for t in said if t.startswith("everything")]
    return "; ".join(everything or said) or "nothing"


# ------------------------------------------------------------------------------------------ the plan

@dataclass(frozen=True)
class Costs:
    """Seconds per action: the base build's recorded stage times where known, else the ASSUMED_* figures."""

    build_s: float
    """configure + build + verify + install of an optimized build."""
    train_s: float
    """Instrumented build + training + merge (a candidate that cannot reuse the base's profile data)."""
    bolt_s: float
    """BOLT's stages on top of the build."""
    count_s: float
    """One candidate's screening counts (all `screen` targets), plus its venv."""
    confirm_subject_s: float
    """One subject of the confirmation run (latency on every `confirm` target plus the guard)."""
    source: str
    """Where the figures come from."""
    repeat_s: float = 0.0
    """The base's second count of its runtime screening targets (the noise floor)."""

    def candidate(self, reuse: bool, bolt: bool) -> float:
        return self.build_s + (0.0 if reuse else self.train_s) + (self.bolt_s if bolt else 0.0) + self.count_s


def repeat_targets(settings: SearchSettings) -> tuple[str, ...]:
    """The screening targets the base is counted on a second time (none without `base_repeat`)."""
    return tuple(t for t in settings.screen if TARGETS[t].needs_runtime) if settings.base_repeat else ()


def costs_from(manifest: Mapping | None, settings: SearchSettings, count_s: float | None = None) -> Costs:
    """Costs from the base's manifest (`stages`: recorded seconds, also for stamp-skipped stages)."""
    def assumed(targets: Sequence[str]) -> float:
        return sum(ASSUMED_COUNT_S["runtime" if TARGETS[t].needs_runtime else "interpreter"] for t in targets)

    per_target = assumed(settings.screen)
    count = (count_s if count_s is not None else per_target) + ASSUMED_VENV_S
    # The repeat's share of a whole count, by the assumed per-target times (the venv is already there).
    repeat = (count - ASSUMED_VENV_S) * assumed(repeat_targets(settings)) / per_target if per_target else 0.0
    latency = ASSUMED_CONFIRM_TARGET_S * (1.0 if settings.confirm_quick else FULL_LATENCY_FACTOR)
    confirm = latency * len(settings.confirm) + ASSUMED_GUARD_S + ASSUMED_VENV_S
    stages = (manifest or {}).get("stages") or {}
    build = sum(stages[s]["seconds"] for s in BUILD_STAGES if s in stages)
    train = sum(stages[s]["seconds"] for s in TRAINING_STAGES if s in stages)
    bolt = sum(v["seconds"] for k, v in stages.items() if k.startswith("bolt"))
    if build > 0:
        src = f"the base build's recorded stages ({manifest.get('build_id')})"
        return Costs(build, train or ASSUMED_TRAIN_S, bolt or (train or ASSUMED_TRAIN_S), count, confirm,
                     src + ("" if count_s is None else "; screening timed on the base"), repeat)
    return Costs(ASSUMED_BUILD_S, ASSUMED_TRAIN_S, ASSUMED_TRAIN_S, count, confirm,
                 "assumed (the base is not built yet: the real run measures it first)", repeat)


@dataclass(frozen=True)
class PlannedCandidate:
    """A candidate as the plan sees it: its build, what it rebuilds, its profile data, its cost."""

    candidate: Candidate
    build_id: str
    """`cpython-<version>-<candidate id>`: its install prefix under .hostpgo/install/."""
    rebuilds: str
    """What its items change in the build (REBUILDS)."""
    reuse: bool
    """Whether it builds with the base's profile data (--profile-data)."""
    reuse_why: str
    """profile_data_reusable's reason (or why it was not asked)."""
    estimate_s: float
    """Build (+ training, + BOLT) and screening, in seconds."""


@dataclass(frozen=True)
class Plan:
    """What a search will do, and what it leaves out, within the budget (`describe` prints it)."""

    strategy: str
    base: str
    """The base profile reference (a name, or an absolute path)."""
    base_build_id: str
    base_installed: bool
    """Whether the base's install prefix holds a manifest (else it is built first)."""
    profile_data: str | None
    """The base's merged profile data (its manifest's `profile_data.path`), None until it is built."""
    costs: Costs
    singles: tuple[PlannedCandidate, ...]
    dropped: tuple[PlannedCandidate, ...]
    """Left out to fit the budget."""
    left_out: tuple[tuple[str, str], ...]
    """(dimension=label, why): an unmet condition, or the base itself."""
    starting_points: tuple[tuple[str, bool], ...]
    """(profile, installed)."""
    reserve_s: float
    """The combined candidate (when two or more dimensions have candidates), the starting points' builds and the
    confirmation run."""
    estimate_s: float
    """Everything the plan keeps, with the reserve, in seconds."""
    budget_s: float
    notes: tuple[str, ...] = ()


def build_id_of(stem: str) -> str:
    from buildsys.pipeline import sources

    return f"cpython-{sources.pinned('cpython').version}-{stem}"


def read_manifest(build_id: str, work: WorkArea) -> dict | None:
    path = work.install / build_id / "hostpgo-manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); rebuild {build_id} or delete its install prefix") from None


def base_profile_data(manifest: Mapping | None, work: WorkArea) -> str | None:
    """The base's merged profile data: its manifest's `profile_data.path` when that file is there, else the newest
    `<build id>-<key>.profdata` (or `.gcda` tree) of the base in the profile store; None without either."""
    if not manifest:
        return None
    path = (manifest.get("profile_data") or {}).get("path")
    if path and Path(path).exists():
        return str(path)
    stored = sorted((p for p in work.profiles.glob(f"{manifest.get('build_id')}-*")
                     if p.suffix in (".profdata", ".gcda")), key=lambda p: p.stat().st_mtime)
    return str(stored[-1]) if stored else None


def bisheng_note(host: HostFacts) -> str:
    """Whether BiSheng's -fautotune-generate / llvm-autotune loop is part of the plan, and why."""
    if host.bisheng is None:
        return ("BiSheng autotune loop (-fautotune-generate / llvm-autotune): left out: no BiSheng compiler was "
                f"detected (installed: {', '.join(host.families) or 'none'})")
    return (f"BiSheng autotune loop: BiSheng was detected ({host.bisheng}), but this driver does not run the "
            "-fautotune-generate / llvm-autotune feedback loop yet; the space's other dimensions are searched with it")


def plan_search(space: Space, *, budget_s: float, host: HostFacts, work: WorkArea, base_ref: str | None = None,
                manifest: Mapping | None = None, count_s: float | None = None, spent_s: float = 0.0,
                remaining: Mapping[str, float] | None = None, repeat_done: bool = False,
                check: Callable[[profmod.Profile, Path], tuple[bool, str]] | None = None) -> Plan:
    """The candidates of one-at-a-time stage, what the budget drops, and the estimate (no builds, no counts).

    `manifest` is the base's (None when it is not built: the base is then part of the estimate); `count_s` the
    base's measured screening time; `remaining` the seconds a resumed run still needs per candidate id (0 when
    its log holds its screening or its rejection: such a candidate costs nothing and is never dropped). Pure
    apart from reading profiles and the starting points' manifests."""
    remaining = remaining or {}
    base = base_ref or space.settings.base
    base_prof = profmod.load(base, environ={})
    base_values = resolved_values(base)
    bid = build_id_of(base_prof.name)
    data = base_profile_data(manifest, work)
    check = check or profile_data_reusable
    costs = costs_from(manifest, space.settings, count_s)
    common = space.common
    notes: list[str] = []
    singles: list[PlannedCandidate] = []
    left: list[tuple[str, str]] = []
    kept_by_dim: dict[str, list[PlannedCandidate]] = {}
    """Candidates still to do, per dimension (what the budget may drop)."""
    done: list[PlannedCandidate] = []
    for dim in space.dimensions:
        for ch in dim.choices:
            label = f"{dim.name}={ch.label}"
            overrides = override_items(ch.items, base_prof)
            try:
                prof = profmod.load(base, overrides=overrides, environ={})
            except HostpgoError as exc:
                raise InputError(f"{space.path} dimension {dim.name!r} choice {ch.label!r}: {exc}") from None
            if resolved_values(base, overrides) == base_values:
                left.append((label, f"the base itself ({base_prof.name} already has it)"))
                continue
            why = unmet((*dim.requires, *ch.requires), prof, host)
            if why:
                left.append((label, why))
                continue
            cand = Candidate(candidate_id(base, dim.name, ch.label, ch.items, common), dim.name, ch.label,
                             ch.items, (*dim.requires, *ch.requires))
            if data:
                full = profmod.load(base, overrides=override_items((*ch.items, *common), base_prof), environ={})
                try:
                    reuse, rwhy = check(full, Path(data))
                except HostpgoError as exc:
                    reuse, rwhy = False, f"the reuse check refused it: {exc}"
            elif manifest:
                reuse, rwhy = False, "the base's manifest names no profile data that exists (and the profile store " \
                                     "holds none of it)"
            else:
                reuse, rwhy = False, "the base is not built yet: decided against its profile data once it exists"
            pc = PlannedCandidate(cand, build_id_of(cand.id), rebuilds(ch.items), reuse, rwhy,
                                  costs.candidate(reuse, prof.optimize.bolt))
            singles.append(pc)
            if remaining.get(cand.id) == 0:
                done.append(pc)
            else:
                kept_by_dim.setdefault(dim.name, []).append(pc)
    starting = []
    for sp in space.settings.starting_points:
        sprof = profmod.load(sp, environ={})
        starting.append((sp, read_manifest(build_id_of(sprof.name), work) is not None))
    # The base: built unless installed, counted unless its count was measured (`count_s`).
    base_cost = ((0.0 if manifest else costs.build_s + costs.train_s) + (0.0 if count_s is not None else costs.count_s)
                 + (0.0 if repeat_done else costs.repeat_s))
    builds_of_starting = sum(costs.build_s + costs.train_s for _, installed in starting if not installed)

    def reserve() -> float:
        """The combination (when two or more dimensions keep candidates), the starting points' builds, and the
        confirmation run of the base, Debian, the finalists the kept candidates can give and the starting points."""
        kept = [p for ps in kept_by_dim.values() for p in ps] + done
        dims = {p.candidate.dimension for p in kept}
        combined = max((p.estimate_s for p in kept), default=0.0) if len(dims) > 1 else 0.0
        finals = min(space.settings.finalists, len(kept) + (combined > 0))
        measured = finals + len(starting)
        return combined + builds_of_starting + (costs.confirm_subject_s * (2 + measured) if measured else 0.0)

    left_s = budget_s - spent_s

    def estimate() -> float:
        return base_cost + sum(remaining.get(p.candidate.id, p.estimate_s) for ps in kept_by_dim.values()
                               for p in ps) + reserve()

    lists = [kept_by_dim.get(d.name, []) for d in space.dimensions]  # the same lists, in priority order
    dropped = [p for _, p in drop_longest_first(lists, lambda: estimate() > left_s)]
    kept = {p.candidate.id for ps in kept_by_dim.values() for p in ps} | {p.candidate.id for p in done}
    if dropped:
        notes.append(f"budget {budget_s:.0f}s (left {left_s:.0f}s): dropped {len(dropped)} candidate(s) from the "
                     "end of the longest dimensions")
    if estimate() > left_s:
        notes.append(f"even the smallest plan is estimated at {estimate():.0f}s, over the {left_s:.0f}s left: the "
                     "run stops at the first step that does not fit")
    return Plan(STRATEGY, base, bid, manifest is not None, data, costs,
                tuple(p for p in singles if p.candidate.id in kept), tuple(dropped), tuple(left),
                tuple(starting), reserve(), estimate(), budget_s, tuple(notes))


def combine(space: Space, winners: Sequence[PlannedCandidate], base_ref: str, host: HostFacts
            ) -> tuple[Candidate | None, list[str]]:
    """The per-dimension winners (priority order) as one candidate, or None for fewer than two; a winner whose
    `requires` does not hold once combined (split-machine-functions after a gcc winner) is left out, said in the
    notes."""
    notes: list[str] = []
    if len(winners) < 2:
        return None, notes
    base_prof = profmod.load(base_ref, environ={})
    chosen: list[PlannedCandidate] = []
    for w in winners:
        items, _ = merge_items([c.candidate.items for c in (*chosen, w)])
        prof = profmod.load(base_ref, overrides=override_items(items, base_prof), environ={})
        why = next((u for u in (unmet(c.candidate.requires, prof, host) for c in (*chosen, w)) if u), None)
        if why:
            notes.append(f"{w.candidate.dimension}={w.candidate.label} left out of the combination: {why}")
            continue
        chosen.append(w)
    if len(chosen) < 2:
        return None, notes
    items, merged = merge_items([c.candidate.items for c in chosen])
    notes += merged
    label = "+".join(c.candidate.label for c in chosen)
    cid = candidate_id(base_ref, "combined", "", items, space.common)
    return Candidate(cid, "combined", label, items, tuple(r for c in chosen for r in c.candidate.requires),
                     tuple(c.candidate.id for c in chosen)), notes


def describe(plan: Plan, space: Space, host: HostFacts) -> list[str]:
    """The plan as lines (what --dry-run prints)."""
    c = plan.costs
    lines = [f"strategy: {plan.strategy}",
             f"space: {space.path}",
             f"base: {plan.base} ({plan.base_build_id}; "
             + ("installed" if plan.base_installed else "not installed: built first") + ")",
             "base profile data: " + (plan.profile_data or "none yet (made by the base's build)"),
             f"costs from {c.source}: build+verify {c.build_s:.0f}s, training {c.train_s:.0f}s, BOLT {c.bolt_s:.0f}s, "
             f"screening {c.count_s:.0f}s per candidate, confirmation {c.confirm_subject_s:.0f}s per subject",
             f"screening: cachegrind instructions per unit on {', '.join(space.settings.screen)}; a candidate stays "
             f"when the geometric mean of its ratios to the base is below {1 - space.settings.threshold:.4g}"
             + (f" minus the noise floor (the base counted twice on {', '.join(repeat_targets(space.settings))}, "
                f"~{c.repeat_s:.0f}s)" if repeat_targets(space.settings) else ""),
             f"stage 1: {len(plan.singles)} candidate(s), one dimension at a time:"]
    for p in plan.singles:
        cand = p.candidate
        lines.append(f"  {cand.id}: {cand.dimension}={cand.label} [{'; '.join(cand.sets)}]")
        lines.append(f"      rebuilds {p.rebuilds}; profile data: "
                     + ("reused" if p.reuse else "trains itself") + f" ({p.reuse_why}); ~{p.estimate_s / 60:.0f} min")
    lines.append("stage 2: the best survivor of each dimension combined into one candidate (if two or more survive)")
    lines.append(f"finalists: the top {space.settings.finalists} by counts, in one interleaved latency run on "
                 f"{', '.join(space.settings.confirm)} plus the pyperformance guard, beside {plan.base}, "
                 f"Debian's {SYSTEM_PYTHON} and "
                 + (("the starting points " + ", ".join(f"{n} ({'installed' if ok else 'built first'})"
                                                        for n, ok in plan.starting_points))
                    if plan.starting_points else "no starting points"))
    lines.append(f"winner rule {space.settings.winner!r}: {WINNER_RULES[space.settings.winner]}")
    lines.append(f"estimate {plan.estimate_s / 60:.0f} min (reserve {plan.reserve_s / 60:.0f} min for the "
                 f"combination, starting points and confirmation) of a {plan.budget_s / 60:.0f} min budget")
    for p in plan.dropped:
        lines.append(f"dropped for the budget: {p.candidate.id} ({p.candidate.dimension}={p.candidate.label}, "
                     f"~{p.estimate_s / 60:.0f} min)")
    for label, why in plan.left_out:
        lines.append(f"left out: {label}: {why}")
    lines.append(bisheng_note(host))
    return lines + list(plan.notes)


# ------------------------------------------------------------------------------------------ the search log

class SearchLog:
    """`<run>/autotune.jsonl`: one JSON record per line, appended and flushed as each step ends, so an
    interrupted run leaves every finished step; a torn last line (killed mid-write) is dropped on reading."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict] = []
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            for n, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    self.records.append(json.loads(line))
                except ValueError:
                    if n != len(lines) - 1:
                        raise InputError(f"{path}:{n + 1}: not a JSON record; the log is damaged (restore it, "
                                         "or start a new run)") from None
                    # Torn by a kill mid-write: dropped, so the next record starts on a line of its own.
                    fsutil.write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in self.records))

    def add(self, record: Mapping) -> dict:
        rec = {"t": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")
            fh.flush()
        self.records.append(rec)
        return rec

    def done(self, cid: str, phase: str) -> dict | None:
        """The last finished record of `phase` for `cid` (a budget skip is not finished work)."""
        for rec in reversed(self.records):
            if rec.get("id") == cid and rec.get("phase") == phase and rec.get("verdict") != "skipped":
                return rec
        return None

    @property
    def header(self) -> dict | None:
        return next((r for r in self.records if r.get("phase") == "run"), None)


# ------------------------------------------------------------------------------------------ actions

@dataclass(frozen=True)
class BuildOutcome:
    """What one `python -m buildsys build cpython` did."""

    ok: bool
    """Built, verified and installed."""
    seconds: float
    """Wall time of the whole command (stamped stages it reused cost nothing)."""
    build_id: str
    python: str
    """The installed interpreter (`<prefix>/bin/python3`)."""
    log: str
    """The failed stage's own log when it failed, else the command's log."""
    failed_stage: str | None = None
    """The stage that failed (`verify`: CPython's tests or a golden digest), None when it is unknown."""
    error: str = ""
    """The tail of the failure's output."""


@dataclass(frozen=True)
class Actions:
    """What the search does to the outside world, injectable (unit tests pass recorded data).

    build(profile_file, profile_data | None, log) -> BuildOutcome
    count(name, python, out_dir, targets, log) -> {target: instructions per unit}
    confirm(subjects [(name, python)], out_dir, targets, log, quick) -> {"vs_base": comparison.json,
        "vs_debian": comparison-vs-debian.json or None}
    compare(out_dir, with_debian) -> the same from a kept confirmation's measurements, by this version's
        statistics (None when the directory no longer holds them)
    """

    build: Callable[[Path, str | None, Path], BuildOutcome]
    count: Callable[[str, str, Path, Sequence[str], Path], dict[str, float]]
    confirm: Callable[[Sequence[tuple[str, str]], Path, Sequence[str], Path, bool], dict]
    compare: Callable[[Path, bool], dict | None] | None = None


def build_argv(profile_file: Path | str, profile_data: str | None) -> list[str]:
    return [sys.executable, "-m", "buildsys", "build", "cpython", "--profile", str(profile_file),
            *(["--profile-data", profile_data] if profile_data else [])]


INTERRUPTED_CODES = frozenset({130, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM})
"""Exit codes of a child that was interrupted, not one that failed: 130 (our CLIs on Ctrl-C), 143, or killed by
SIGINT/SIGTERM. A background search (nohup, CI) ignores SIGINT itself while its children do not, so the child
can stop alone."""


def _run_child(argv: Sequence[str], log: Path, *, timeout: float, collect: list[str] | None = None) -> None:
    """Run one build, count or measurement; an interrupted child interrupts the search (KeyboardInterrupt: exit
    130, resume with --resume) instead of being recorded as a failed build or a failed tool."""
    try:
        Runner(log).run(list(argv), timeout=timeout, collect=collect)
    except CommandError as exc:
        if exc.returncode in INTERRUPTED_CODES:
            what = " ".join(argv[2:4])
            raise KeyboardInterrupt(f"{what} was interrupted (exit {exc.returncode}; log {log})") from exc
        raise


def _real_build(work: WorkArea) -> Callable[[Path, str | None, Path], BuildOutcome]:
    def build(profile_file: Path, profile_data: str | None, log: Path) -> BuildOutcome:
        stem = Path(profile_file).stem if str(profile_file).endswith(".toml") else \
            profmod.load(str(profile_file), environ={}).name
        bid = build_id_of(stem)
        python = str(work.install / bid / "bin" / "python3")
        lines: list[str] = []
        t0 = time.monotonic()
        try:
            _run_child(build_argv(profile_file, profile_data), log, timeout=BUILD_TIMEOUT, collect=lines)
        except CommandError as exc:
            found = STAGE_FAILED_RE.findall("\n".join(lines) + "\n" + (exc.log_tail or ""))
            stage, _, stage_log = found[-1] if found else (None, None, None)
            return BuildOutcome(False, time.monotonic() - t0, bid, python, stage_log or str(log), stage,
                                " ".join((exc.log_tail or str(exc)).split())[-600:])
        return BuildOutcome(True, time.monotonic() - t0, bid, python, str(log))
    return build


def _real_count(name: str, python: str, out_dir: Path, targets: Sequence[str], log: Path) -> dict[str, float]:
    argv = [sys.executable, "-m", "perf", "counters", "--interp", f"{name}={python}", "--workloads",
            ",".join(targets), "--backend", "cachegrind", "--quick", "--out", str(out_dir)]
    try:
        _run_child(argv, log, timeout=MEASURE_TIMEOUT)
    except CommandError as exc:
        if exc.returncode == UncountableError.exit_code:  # the child's own UncountableError; its reason ends the log
            said = " ".join((exc.log_tail or "").split()).rpartition("error: ")[2]
            raise UncountableError(said or f"{python}: perf counters exit {exc.returncode}; log {log}") from exc
        raise
    rec = json.loads((out_dir / "run.json").read_text(encoding="utf-8"))
    res = rec["counters"]["results"][name]
    return {t: float(res[t]["per_unit"]["instructions"]) for t in targets}


def _real_confirm(subjects: Sequence[tuple[str, str]], out_dir: Path, targets: Sequence[str], log: Path,
                  quick: bool = True) -> dict:
    argv = [sys.executable, "-m", "perf", "bench"]
    for name, python in subjects:
        argv += ["--interp", f"{name}={python}"]
    argv += ["--workloads", ",".join(targets), "--stages", "latency,guard", "--guard-fast",
             *(["--quick"] if quick else []), "--out", str(out_dir)]
    _run_child(argv, log, timeout=MEASURE_TIMEOUT)
    from . import report

    out = {"vs_base": json.loads((out_dir / "comparison.json").read_text(encoding="utf-8")), "vs_debian": None}
    if any(n == "debian" for n, _ in subjects):
        report.build(out_dir, baseline="debian")
        out["vs_debian"] = json.loads((out_dir / "comparison-vs-debian.json").read_text(encoding="utf-8"))
    return out


def _real_compare(out_dir: Path, with_debian: bool) -> dict | None:
    """A kept confirmation's comparisons, regenerated from its measurements (perf report: report.md and
    comparison*.json are derived files; the latency and guard JSON are read, never written)."""
    from . import report

    if not (out_dir / "run.json").is_file():
        return None
    report.build(out_dir)
    out = {"vs_base": json.loads((out_dir / "comparison.json").read_text(encoding="utf-8")), "vs_debian": None}
    if with_debian:
        report.build(out_dir, baseline="debian")
        out["vs_debian"] = json.loads((out_dir / "comparison-vs-debian.json").read_text(encoding="utf-8"))
    return out


def real_actions(work: WorkArea | None = None) -> Actions:
    return Actions(_real_build(work or WorkArea.from_env()), _real_count, _real_confirm, _real_compare)


# ------------------------------------------------------------------------------------------ judging

def geomean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals and len(vals) == len(values) else None


def noise_of(first: Mapping[str, float], again: Mapping[str, float]) -> dict[str, float]:
    """Each target's relative spread between two counts of the base (|a - b| / min(a, b)); 0 where counted once."""
    return {t: abs(first[t] - again[t]) / min(first[t], again[t]) if t in again and min(first[t], again[t]) > 0
            else 0.0 for t in first}


def noise_floor(noise: Mapping[str, float]) -> float:
    """The largest error per-target spreads can put in the geometric mean of the ratios: their mean (each ratio's
    log moves by at most its spread; the geometric mean's log is the mean of the logs)."""
    return sum(noise.values()) / len(noise) if noise else 0.0


def screen_verdict(counts: Mapping[str, float], base_counts: Mapping[str, float], threshold: float,
                   noise: Mapping[str, float] | None = None) -> tuple[dict[str, float], float | None, str, str]:
    """(ratio per target, geometric mean, verdict `survives`|`dropped`, why); the bar is 1 - threshold - the noise
    floor of the base's repeated counts."""
    ratios = {t: counts[t] / base_counts[t] for t in base_counts if t in counts and base_counts[t] > 0}
    geo = geomean(list(ratios.values())) if len(ratios) == len(base_counts) else None
    if geo is None:
        return ratios, None, "dropped", "no usable count on every screening target"
    floor = noise_floor({t: (noise or {}).get(t, 0.0) for t in base_counts})
    bar = 1 - threshold - floor
    said = f"{bar:.4g}" + (f": threshold {threshold:.4g} + noise floor {floor:.4f}" if floor else "")
    if geo < bar:
        return ratios, geo, "survives", f"instructions {geo:.4f}x the base's (below {said})"
    return ratios, geo, "dropped", f"instructions {geo:.4f}x the base's (not below {said})"


def _faster(c: Mapping | None) -> bool:
    return bool(c) and bool(c["geomean_significant"]) and c["geomean_ratio"] < 1


def _slower(c: Mapping | None) -> bool:
    return bool(c) and bool(c["geomean_significant"]) and c["geomean_ratio"] > 1


def confirm_verdict(cid: str, comps: Mapping, rule: str = "latency") -> dict:
    """A finalist's latency and guard comparisons with the base (comparison.json entries), judged by one of
    WINNER_RULES. Both rules refuse a guard that is significantly slower; `latency` wins on a significant latency
    geometric mean below 1; `counts` (the finalist already has fewer instructions) wins when the latency or the
    guard geometric mean is significantly below 1 and no confirmation target is significantly slower."""
    if rule not in WINNER_RULES:
        raise InputError(f"winner rule {rule!r}: choose {' or '.join(WINNER_RULES)}")
    lat = next((c for c in comps.get("latency", []) if c["changed"] == cid), None)
    grd = next((c for c in comps.get("guard", []) if c["changed"] == cid), None)
    if lat is None:
        return {"wins": False, "latency": None, "guard": None, "rule": rule, "why": "no latency result"}
    out = {"latency": lat["geomean_ratio"], "latency_significant": lat["geomean_significant"],
           "guard": grd["geomean_ratio"] if grd else None,
           "guard_significant": grd["geomean_significant"] if grd else None, "rule": rule}
    lat_said = (f"latency geometric mean {lat['geomean_ratio']:.3f}x the base's, "
                + ("significant" if lat["geomean_significant"] else "not significant"))
    if _slower(grd):
        return {**out, "wins": False, "why": f"pyperformance guard significantly slower ({grd['geomean_ratio']:.3f}x)"}
    if rule == "latency":
        return {**out, "wins": _faster(lat), "why": lat_said}
    slower = [r["name"] for r in lat.get("rows", []) if r.get("significant") and r["ratio"] > 1]
    if _slower(lat) or slower:
        return {**out, "wins": False, "why": f"{lat_said}; significantly slower on "
                                             + (", ".join(slower) or "the geometric mean")}
    grd_said = ("guard not measured" if not grd else
                f"guard {grd['geomean_ratio']:.3f}x, " + ("significant" if grd["geomean_significant"]
                                                          else "not significant"))
    wins = _faster(lat) or _faster(grd)
    return {**out, "wins": wins, "why": f"{lat_said}; {grd_said}; no target significantly slower"
                                        + ("" if wins else "; neither significantly faster")}


# ------------------------------------------------------------------------------------------ output

def best_header(*, run: str, command: Sequence[str], cand: Candidate, base: str, vs_base: Mapping | None,
                vs_debian: Mapping | None, guard_vs_base: Mapping | None, count_ratio: float | None,
                cost: Mapping, guard_vs_debian: Mapping | None = None, rule: str = "latency") -> list[str]:
    """best.toml's header comment: what was measured, against what, with significance; and how."""
    def gm(c: Mapping | None, what: str) -> str:
        if not c:
            return f"{what}: not measured"
        return (f"{what}: {1 / c['geomean_ratio']:.3f}x faster (geometric mean ratio {c['geomean_ratio']:.3f}, "
                + ("significant" if c.get("geomean_significant") else "not significant") + " at 95%)")

    lines = [f"hostpgo autotune {run}: {cand.dimension}={cand.label} ({cand.id}) over {base}",
             gm(vs_base, f"latency vs {base}"), gm(vs_debian, f"latency vs Debian {SYSTEM_PYTHON}"),
             gm(guard_vs_base, f"pyperformance guard vs {base}"),
             gm(guard_vs_debian, f"pyperformance guard vs Debian {SYSTEM_PYTHON}")]
    if count_ratio is not None:
        lines.append(f"instructions per unit (cachegrind, geometric mean over the screening targets): "
                     f"{count_ratio:.4f}x {base}'s")
    lines.append(f"chosen by the winner rule {rule!r}: {WINNER_RULES[rule]}")
    lines.append(f"search cost: {cost.get('builds', 0)} build(s), {cost.get('minutes', 0):.0f} min")
    lines.append("command: " + " ".join(command))
    return lines


def write_best(dest: Path, cand: Candidate, *, base_ref: str, header: Sequence[str]) -> Path:
    """best.toml: the winner's items over the base (no common items), resolvable like any profile."""
    base_prof = profmod.load(base_ref, environ={})
    return write_candidate_file(dest, cand, base_ref=base_ref, common=(), base_profile=base_prof, header=header)


def render(state: Mapping) -> str:
    """autotune.md from the run's state (every candidate: build time, counts, verdict, why)."""
    s = state
    lines = [f"# autotune {s['run']}", "", f"Strategy: {STRATEGY}.", "",
             f"Base: `{s['base']}`; space `{s['space']}`; budget {s['budget_s'] / 60:.0f} min, this session spent "
             f"{s.get('spent_s', 0) / 60:.0f} min.", ""]
    if s.get("command"):
        lines += ["Command: `" + " ".join(s["command"]) + "`", ""]
    lines += ["| candidate | what | build | profile data | instructions vs base | screening | confirmation |",
              "|---|---|---|---|---|---|---|"]
    for c in s["candidates"]:
        b = c.get("build") or {}
        build = ("-" if not b else f"{b['seconds'] / 60:.1f} min" if b.get("ok") else
                 f"REJECTED ({b.get('failed_stage') or 'build'} failed, log `{b.get('log')}`)")
        sc = c.get("screen") or {}
        ratio = "-" if sc.get("geomean") is None else f"{sc['geomean']:.4f}"
        cf = c.get("confirm") or {}
        conf = "-" if not cf else (("**wins**: " if cf.get("wins") else "") + cf.get("why", ""))
        data = ("reused" if c.get("reuse") else "trained") + (f" ({c['reuse_why']})" if c.get("reuse_why") else "")
        lines.append(f"| `{c['id']}` | {c['dimension']}={c['label']} | {build} | {data} | "
                     f"{ratio} | {sc.get('verdict', c.get('verdict', '-'))}: {sc.get('why', c.get('why', ''))} | "
                     f"{conf} |".replace("\n", " "))
    lines += ["", "Instructions: geometric mean over the screening targets of the candidate's cachegrind "
              "instructions per unit / the base's (below 1 is fewer).", ""]
    if s.get("noise"):
        spread = ", ".join(f"{t} {v:.2%}" for t, v in s["noise"]["per_target"].items())
        lines += [f"Noise floor {s['noise']['floor']:.4f}: the base counted twice, its spread per target {spread}; "
                  "the reference is the mean of the two counts, and a candidate must be below 1 - threshold - "
                  "the floor.", ""]
    for label, why in s.get("left_out", []):
        lines.append(f"- left out: {label}: {why}")
    for what in s.get("skipped", []):
        lines.append(f"- skipped for the budget: {what}")
    for n in s.get("notes", []):
        lines.append(f"- {n}")
    lines.append("")
    conf = s.get("confirm")
    if conf:
        base = conf["subjects"][0]
        how = ("perf bench --quick: 4 rounds x 3 values" if conf.get("quick", True)
               else "perf bench at its full settings: 6 rounds x 5 values")
        lines += [f"## Confirmation run (one interleaved run, {how}, guard pyperformance --fast; ratios to {base}, "
                  "below 1 is faster)", "",
                  "| subject | latency vs base | pyperformance guard vs base | latency vs Debian | "
                  "pyperformance guard vs Debian |",
                  "|---|---|---|---|---|"]

        def cell(c: Mapping | None) -> str:
            return "-" if not c else f"{c['geomean_ratio']:.3f}" + ("" if c.get("geomean_significant") else " (n.s.)")

        for name in conf["subjects"][1:]:
            lines.append(f"| `{name}` | {cell(_pick(conf['vs_base'], name))} | "
                         f"{cell(_pick(conf['vs_base'], name, 'guard'))} | "
                         f"{'-' if name == 'debian' else cell(_pick(conf.get('vs_debian'), name))} | "
                         f"{'-' if name == 'debian' else cell(_pick(conf.get('vs_debian'), name, 'guard'))} |")
        lines += ["", "Geometric means over the confirmation targets (latency) and the guard's benchmarks; "
                  "`(n.s.)`: not significant at 95% (perf.compare's geometric-mean test).", ""]
    rule = s.get("winner", "latency")
    lines += [f"Winner rule `{rule}`: {WINNER_RULES[rule]}.", ""]
    best = s.get("best")
    lines += [f"**Best:** `{best['id']}` ({best['label']}): `{best['file']}`" if best else
              "**Best:** no finalist won by the winner rule; no best.toml was written.", ""]
    for p in s.get("plots", []):
        lines.append(f"![{Path(p).stem}]({p})")
    return "\n".join(lines) + "\n"


def plot_counts(state: Mapping, dest: Path) -> Path | None:
    """Bars: each screened candidate's instruction ratio to the base (plots.py conventions)."""
    from . import plots

    rows = [(c["id"], c["screen"]["geomean"], c["screen"]["verdict"]) for c in state["candidates"]
            if (c.get("screen") or {}).get("geomean") is not None]
    if not rows:
        return None
    return plots.search_counts(rows, state["base"], dest)


def plot_confirm(confirm: Mapping | None, dest: Path) -> Path | None:
    """The finalists' latency speedups vs the base, from the confirmation run's comparison.json."""
    if not confirm or not confirm.get("latency"):
        return None
    from . import plots
    from .compare import Comparison, Row

    fields = set(Row.__dataclass_fields__)
    comps = [Comparison(c["baseline"], c["changed"], tuple(Row(**{k: v for k, v in r.items() if k in fields})
                                                           for r in c["rows"]),
                        c["geomean_ratio"], (), (), c.get("geomean_significant", False)) for c in confirm["latency"]]
    return plots.speedups(comps, dest, "autotune finalists: latency speedup vs the base")


# ------------------------------------------------------------------------------------------ executor

@dataclass
class _Session:
    run_dir: Path
    log: SearchLog
    actions: Actions
    budget_s: float
    say: Callable[[str], None]
    started: float = field(default_factory=time.monotonic)
    skipped: list[str] = field(default_factory=list)
    builds: int = 0

    def spent(self) -> float:
        return time.monotonic() - self.started

    def fits(self, what: str, estimate: float, cid: str, phase: str) -> bool:
        """Whether `estimate` seconds fit in what is left; if not, the skip is said and logged (a skip is not
        finished work: a resumed run with budget left does it)."""
        left = self.budget_s - self.spent()
        if estimate <= left:
            return True
        msg = f"{what} (~{estimate / 60:.0f} min, {max(left, 0) / 60:.0f} min left)"
        self.skipped.append(msg)
        self.say(f"skipped for the budget: {msg}")
        self.log.add({"id": cid, "phase": phase, "verdict": "skipped", "why": f"budget: {msg}"})
        return False


def confirm_dir(run_dir: Path, subjects: Sequence[str], quick: bool) -> Path:
    """One directory per set of subjects and mode: an interrupted confirmation resumes in it (perf bench keeps the
    stages it holds), a later one with other finalists or --confirm-full gets its own."""
    return run_dir / f"confirm-{_digest(list(subjects) + ([] if quick else ['full']))[:8]}"


def new_autotune_dir(out: str | None) -> Path:
    run_dir = new_run_dir(out or "autotune-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    if run_dir.exists() and any(run_dir.iterdir()):
        raise InputError(f"--out {run_dir}: already holds files; autotune never overwrites a run: choose another "
                         "name, or continue it with --resume")
    return run_dir


def resume_dir(ref: str) -> Path:
    path = Path(ref) if ("/" in ref or ref.startswith(".")) else new_run_dir(ref)
    if not (path / LOG_FILE).is_file():
        raise InputError(f"--resume {ref}: no {LOG_FILE} in {path}; name the run directory (or run name under "
                         "$HOSTPGO_HOME/results) of an earlier autotune run")
    if SearchLog(path / LOG_FILE).header is None:
        raise InputError(f"--resume {ref}: {path / LOG_FILE} has no run record; it is not an autotune log")
    return path


def with_options(space: Space, *, finalists: int | None = None, starting_points: Sequence[str] | None = None,
                 confirm_quick: bool | None = None, winner: str | None = None) -> Space:
    """The space with the command line's --finalists, --starting-points, --confirm-full and --winner over its
    [search] values."""
    if winner is not None and winner not in WINNER_RULES:
        raise InputError(f"--winner {winner}: choose {' or '.join(WINNER_RULES)}")
    s = space.settings
    return replace(space, settings=replace(
        s, finalists=finalists or s.finalists,
        starting_points=s.starting_points if starting_points is None else tuple(starting_points),
        confirm_quick=s.confirm_quick if confirm_quick is None else confirm_quick,
        winner=winner or s.winner))


def remaining_work(log: SearchLog, count_s: float) -> dict[str, float]:
    """Seconds each candidate of a resumed run still needs: 0 once screened or rejected, `count_s` once built."""
    out: dict[str, float] = {}
    for rec in log.records:
        if rec.get("verdict") == "skipped" or rec.get("phase") not in ("build", "screen"):
            continue
        if rec["phase"] == "screen" or not rec.get("ok"):
            out[rec["id"]] = 0.0
        else:
            out.setdefault(rec["id"], count_s)
    return out


def base_reference(ref: str) -> str:
    """A base given as a path becomes absolute (candidate files live elsewhere); a profile name stays a name."""
    if ref.endswith(".toml") or "/" in ref:
        return str(profmod.profile_path(ref))
    return ref


def dry_run(*, budget_s: float, space_path: Path | None = None, base: str | None = None,
            starting_points: Sequence[str] | None = None, confirm_quick: bool | None = None,
            winner: str | None = None, resume: str | None = None, host: HostFacts | None = None,
            work: WorkArea | None = None,
            check: Callable[[profmod.Profile, Path], tuple[bool, str]] | None = None) -> list[str]:
    """The whole plan against the base's real manifest where it is installed (with `resume`, what that run still
    has to do); builds and measures nothing."""
    count_s, remaining, finalists, repeat_done = None, None, None, False
    if resume:
        run_dir = resume_dir(resume)
        log = SearchLog(run_dir / LOG_FILE)
        space_path, base, finalists = run_dir / "space.toml", log.header["base"], log.header.get("finalists")
        if starting_points is None:
            starting_points = log.header.get("starting_points")
        count_s = (log.done("base", "screen") or {}).get("seconds")
        repeat_done = log.done("base", "repeat") is not None
        winner = winner or log.header.get("winner")
    space = with_options(load_space(space_path or DEFAULT_SPACE), finalists=finalists,
                         starting_points=starting_points, confirm_quick=confirm_quick, winner=winner)
    host = host or HostFacts.detect()
    work = work or WorkArea.from_env()
    base_ref = base_reference(base or space.settings.base)
    manifest = read_manifest(build_id_of(profmod.load(base_ref, environ={}).name), work)
    if resume:
        remaining = remaining_work(log, costs_from(manifest, space.settings, count_s).count_s)
    return describe(plan_search(space, budget_s=budget_s, host=host, work=work, base_ref=base_ref,
                                manifest=manifest, count_s=count_s, remaining=remaining,
                                repeat_done=repeat_done, check=check), space, host)


def run(*, budget_s: float, space_path: Path | None = None, base: str | None = None, out: str | None = None,
        resume: str | None = None, finalists: int | None = None, starting_points: Sequence[str] | None = None,
        confirm_quick: bool | None = None, winner: str | None = None, write_profile: bool = False,
        actions: Actions | None = None, host: HostFacts | None = None, work: WorkArea | None = None,
        check: Callable[[profmod.Profile, Path], tuple[bool, str]] | None = None,
        say: Callable[[str], None] = print, argv: Sequence[str] = ()) -> dict:
    """Run (or resume) a search; returns the final state (also autotune.md / best.toml in the run dir)."""
    if os.environ.get(profmod.ENV_VAR):
        raise InputError(f"environment variable {profmod.ENV_VAR} is set ({os.environ[profmod.ENV_VAR]!r}): every "
                         "build the search starts would apply it on top of its candidate file; unset it and put "
                         "the items in the space's [search] common list instead")
    work = work or WorkArea.from_env()
    host = host or HostFacts.detect()
    actions = actions or real_actions(work)
    if resume:
        run_dir = resume_dir(resume)
        log = SearchLog(run_dir / LOG_FILE)
        head = log.header
        space_path, base = run_dir / "space.toml", head["base"]
        finalists = finalists or head.get("finalists")
        if starting_points is None and head.get("starting_points") is not None:
            starting_points = head["starting_points"]
        winner = winner or head.get("winner")  # the run's own rule unless this session names one
        say(f"resuming {run_dir}: {len(log.records)} record(s) kept; nothing they hold is built or measured again")
    else:
        src = Path(space_path or DEFAULT_SPACE)
        space0 = load_space(src)
        run_dir = new_autotune_dir(out)
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, run_dir / "space.toml")  # the search the log belongs to, kept with it
        log = SearchLog(run_dir / LOG_FILE)
        base = base_reference(base or space0.settings.base)
        log.add({"phase": "run", "schema": LOG_SCHEMA, "run": run_dir.name, "space": str(src.resolve()),
                 "base": base, "finalists": finalists or space0.settings.finalists,
                 "starting_points": list(starting_points) if starting_points is not None else None,
                 "winner": winner, "command": list(argv),
                 "host": {"machine": host.machine, "compilers": list(host.families)}})
    space = with_options(load_space(space_path), finalists=finalists, starting_points=starting_points,
                         confirm_quick=confirm_quick, winner=winner)
    settings = space.settings
    say(f"run directory {run_dir}: an interrupted search continues with --resume {run_dir}")
    sess = _Session(run_dir, log, actions, budget_s, say)
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    base_prof = profmod.load(base, environ={})
    base_bid = build_id_of(base_prof.name)
    state: dict = {"run": run_dir.name, "run_dir": str(run_dir), "base": base, "space": str(space.path),
                   "budget_s": budget_s, "winner": settings.winner,
                   "command": list(argv) or (log.header or {}).get("command", []), "candidates": [], "notes": [],
                   "left_out": [], "skipped": sess.skipped}

    def finish() -> dict:
        state["spent_s"] = sess.spent()
        plots_dir = run_dir / "plots"
        state["plots"] = []
        try:
            for p in (plot_counts(state, plots_dir / "counts.png"), plot_confirm(state.get("confirm_run"),
                                                                                  plots_dir / "confirm.png")):
                if p is not None:
                    state["plots"].append(str(p.relative_to(run_dir)))
        except ImportError as exc:  # matplotlib is in the perf extra
            state["notes"].append(f"no plots: {exc}")
        fsutil.write_text(run_dir / "autotune.md", render(state))
        return state

    # 1. the base: built if missing, then counted once.
    manifest = read_manifest(base_bid, work)
    if manifest is None:
        done = log.done("base", "build")
        if done is None or not done.get("ok"):
            say(f"building the base {base} ({base_bid}) ...")
            b = actions.build(Path(profmod.load(base, environ={}).files[0]), None, logs / "base.build.log")
            sess.builds += 1
            log.add({"id": "base", "phase": "build", **asdict(b), "verdict": "built" if b.ok else "rejected"})
            if not b.ok:
                finish()
                raise HostpgoError(f"the base {base} failed to build ({b.failed_stage or 'build'}; log {b.log}): "
                                   "nothing can be measured against it")
        manifest = read_manifest(base_bid, work)
        if manifest is None:
            raise HostpgoError(f"the base {base} was built but {work.install / base_bid} holds no manifest")
    base_python = str(work.install / base_bid / "bin" / "python3")
    base_counts_rec = log.done("base", "screen")
    t0 = time.monotonic()
    if base_counts_rec is None:
        if not sess.fits("screening count of the base", costs_from(manifest, settings).count_s, "base", "screen"):
            finish()
            raise HostpgoError(f"the budget ({budget_s:.0f}s) does not hold even the base's screening count: "
                               "give a larger --budget")
        say(f"counting the base on {', '.join(settings.screen)} (cachegrind) ...")
        counts = actions.count("base", base_python, run_dir / "counts" / "base", settings.screen,
                               logs / "base.count.log")
        base_counts_rec = log.add({"id": "base", "phase": "screen", "counts": counts,
                                   "seconds": time.monotonic() - t0, "verdict": "reference"})
    base_counts = base_counts_rec["counts"]
    count_s = base_counts_rec.get("seconds")
    # The noise floor: the base's runtime targets counted again (their threads make a whole-process count vary);
    # the reference is then the mean of the two counts.
    again_targets = repeat_targets(settings)
    again = log.done("base", "repeat") if again_targets else None
    if again_targets and again is None and sess.fits(
            "second count of the base (the noise floor)", costs_from(manifest, settings, count_s).repeat_s,
            "base", "repeat"):
        say(f"counting the base again on {', '.join(again_targets)} (the screening's noise floor) ...")
        t0 = time.monotonic()
        counts = actions.count("base", base_python, run_dir / "counts" / "base-repeat", again_targets,
                               logs / "base.repeat.log")
        again = log.add({"id": "base", "phase": "repeat", "counts": counts, "seconds": time.monotonic() - t0,
                         "verdict": "reference"})
    noise: dict[str, float] = {}
    if again is not None:
        noise = noise_of(base_counts, again["counts"])
        base_counts = {t: (v + again["counts"][t]) / 2 if t in again["counts"] else v for t, v in base_counts.items()}
        state["noise"] = {"per_target": noise, "floor": noise_floor(noise)}
    elif again_targets:
        state["notes"].append("no noise floor yet: the base's second count did not fit the budget (a resume "
                              "with budget left makes it; the screening uses the bare threshold until then)")
    remaining = remaining_work(log, costs_from(manifest, settings, count_s).count_s)
    plan = plan_search(space, budget_s=budget_s, host=host, work=work, base_ref=base, manifest=manifest,
                       count_s=count_s, spent_s=sess.spent(), remaining=remaining,
                       repeat_done=again is not None or not again_targets, check=check)
    for line in describe(plan, space, host)[1:]:
        say("plan: " + line)
    state["left_out"] = list(plan.left_out)
    state["notes"] += list(plan.notes) + [bisheng_note(host)]
    for p in plan.dropped:
        sess.skipped.append(f"{p.candidate.id} ({p.candidate.dimension}={p.candidate.label}): dropped by the plan")
    cand_dir = run_dir / "candidates"

    def evaluate(p: PlannedCandidate) -> dict:
        cand = p.candidate
        entry = {"id": cand.id, "dimension": cand.dimension, "label": cand.label, "sets": cand.sets,
                 "build_id": p.build_id, "rebuilds": p.rebuilds, "reuse": p.reuse, "reuse_why": p.reuse_why}
        state["candidates"].append(entry)
        path = cand_dir / f"{cand.id}.toml"
        if not path.is_file():
            write_candidate_file(path, cand, base_ref=base, common=space.common, base_profile=base_prof,
                                 header=[f"autotune run {run_dir.name}: {cand.dimension}={cand.label}"])
        b = log.done(cand.id, "build")
        if b is None:
            if not sess.fits(f"build of {cand.id}", p.estimate_s - plan.costs.count_s, cand.id, "build"):
                entry["verdict"], entry["why"] = "skipped", "budget"
                return entry
            say(f"building {cand.id} ({cand.dimension}={cand.label}); profile data "
                + ("reused" if p.reuse else f"trained: {p.reuse_why}"))
            out = actions.build(path, plan.profile_data if p.reuse else None, logs / f"{cand.id}.build.log")
            sess.builds += 1
            b = log.add({"id": cand.id, "phase": "build", "sets": cand.sets, **asdict(out), "reuse": p.reuse,
                         "reuse_why": p.reuse_why, "verdict": "built" if out.ok else "rejected",
                         "decided_by": None if out.ok else (out.failed_stage or "build"),
                         "why": "" if out.ok else f"{out.failed_stage or 'build'} failed (log {out.log})"})
        entry["build"] = b
        if not b.get("ok"):
            entry["verdict"], entry["why"] = "rejected", b.get("why", "")
            say(f"  {cand.id}: rejected - {entry['why']}")
            return entry
        sc = log.done(cand.id, "screen")
        if sc is None:
            if not sess.fits(f"screening of {cand.id}", plan.costs.count_s, cand.id, "screen"):
                entry["verdict"], entry["why"] = "skipped", "budget"
                return entry
            t1 = time.monotonic()
            try:
                counts = actions.count(cand.id, b["python"], run_dir / "counts" / cand.id, settings.screen,
                                       logs / f"{cand.id}.count.log")
                ratios, geo, verdict, why = screen_verdict(counts, base_counts, settings.threshold, noise)
            except UncountableError as exc:  # e.g. AVX-512 from -march=native: no exact count, no finalist
                counts, ratios, geo, verdict = {}, {}, None, "uncountable"
                why = f"not screened: {exc}"
            sc = log.add({"id": cand.id, "phase": "screen", "sets": cand.sets, "build_id": p.build_id,
                          "build_seconds": b.get("seconds"), "counts": counts, "ratios": ratios, "geomean": geo,
                          "seconds": time.monotonic() - t1, "verdict": verdict, "why": why,
                          "decided_by": "valgrind" if verdict == "uncountable" else "instructions"})
        if sc.get("verdict") in ("survives", "dropped") and sc.get("counts"):
            # Judged again against this session's reference and noise floor (a resume may have added the repeat).
            ratios, geo, verdict, why = screen_verdict(sc["counts"], base_counts, settings.threshold, noise)
            sc = {**sc, "ratios": ratios, "geomean": geo, "verdict": verdict, "why": why}
        entry["screen"] = sc
        entry["verdict"], entry["why"] = sc["verdict"], sc["why"]
        say(f"  {cand.id}: {sc['verdict']} - {sc['why']}")
        return entry

    entries = {p.candidate.id: evaluate(p) for p in plan.singles}
    by_id = {p.candidate.id: p for p in plan.singles}
    survivors = [by_id[i] for i, e in entries.items() if e.get("verdict") == "survives"]
    winners: dict[str, PlannedCandidate] = {}
    for p in survivors:
        w = winners.get(p.candidate.dimension)
        if w is None or entries[p.candidate.id]["screen"]["geomean"] < entries[w.candidate.id]["screen"]["geomean"]:
            winners[p.candidate.dimension] = p
    ordered = [winners[d.name] for d in space.dimensions if d.name in winners]
    combo, notes = combine(space, ordered, base, host)
    state["notes"] += notes
    if combo is not None:
        full = profmod.load(base, overrides=override_items((*combo.items, *space.common), base_prof), environ={})
        reuse, rwhy = False, "the base has no profile data"
        if plan.profile_data:
            try:
                reuse, rwhy = (check or profile_data_reusable)(full, Path(plan.profile_data))
            except HostpgoError as exc:
                reuse, rwhy = False, f"the reuse check refused it: {exc}"
        pc = PlannedCandidate(combo, build_id_of(combo.id), rebuilds(combo.items), reuse, rwhy,
                              plan.costs.candidate(reuse, full.optimize.bolt))
        entries[combo.id] = evaluate(pc)
        by_id[combo.id] = pc
        if entries[combo.id].get("verdict") == "survives":
            survivors.append(pc)

    # 4. finalists: one interleaved latency run + guard beside the base, Debian and the starting points.
    ranked = sorted(survivors, key=lambda p: entries[p.candidate.id]["screen"]["geomean"])
    finals = ranked[:settings.finalists]
    state["finalists"] = [p.candidate.id for p in finals]
    # A full confirmation has its own id (a resume with --confirm-full measures again, in its own directory);
    # once it is there it is the evidence, also for a later quick resume.
    ids = "+".join(p.candidate.id for p in finals)
    full_id = "confirm-full:" + ids
    confirm_id = ("confirm:" + ids) if settings.confirm_quick else full_id
    confirm = log.done(full_id, "confirm") or log.done(confirm_id, "confirm")
    best: PlannedCandidate | None = None
    if finals or plan.starting_points:
        subjects: list[tuple[str, str]] = [(base_prof.name, base_python)]
        if SYSTEM_PYTHON.exists():
            subjects.append(("debian", str(SYSTEM_PYTHON)))
        else:
            state["notes"].append(f"Debian's {SYSTEM_PYTHON} is not installed here: measured without it")
        subjects += [(p.candidate.id, entries[p.candidate.id]["build"]["python"]) for p in finals]
        for sp, _ in plan.starting_points:
            sprof = profmod.load(sp, environ={})
            if sprof.name == base_prof.name:
                continue
            sbid = build_id_of(sprof.name)
            if read_manifest(sbid, work) is None:
                sb = log.done(sp, "build")
                if sb is None:
                    if not sess.fits(f"build of starting point {sp}", plan.costs.build_s + plan.costs.train_s,
                                     sp, "build"):
                        continue
                    o = actions.build(Path(sprof.files[0]), None, logs / f"{sp}.build.log")
                    sess.builds += 1
                    sb = log.add({"id": sp, "phase": "build", **asdict(o), "verdict": "built" if o.ok else "rejected"})
                if not sb.get("ok"):
                    state["notes"].append(f"starting point {sp} failed to build (log {sb.get('log')}): not measured")
                    continue
            subjects.append((sp, str(work.install / sbid / "bin" / "python3")))
        measured = [n for n, _ in subjects if n not in (base_prof.name, "debian")]
        if not measured:
            state["notes"].append("no finalist and no starting point to confirm: no confirmation run")
        elif confirm is None and sess.fits("confirmation run", plan.costs.confirm_subject_s * len(subjects),
                                         confirm_id, "confirm"):
            say(f"confirming {', '.join(n for n, _ in subjects[1:])} against the base (interleaved latency + guard)")
            t_confirm = time.monotonic()
            res = actions.confirm(subjects, confirm_dir(run_dir, [n for n, _ in subjects], settings.confirm_quick),
                                  settings.confirm,
                                  logs / ("confirm.log" if settings.confirm_quick else "confirm-full.log"),
                                  settings.confirm_quick)
            verdicts = {p.candidate.id: confirm_verdict(p.candidate.id, res["vs_base"], settings.winner)
                        for p in finals}
            confirm = log.add({"id": confirm_id, "phase": "confirm", "quick": settings.confirm_quick,
                               "subjects": [n for n, _ in subjects],
                               "seconds": time.monotonic() - t_confirm,
                               "vs_base": res["vs_base"], "vs_debian": res.get("vs_debian"), "verdicts": verdicts,
                               "verdict": "measured"})
        elif confirm is not None and actions.compare is not None:
            # Kept measurements, compared again by this version's statistics (the log keeps what was said then).
            again = actions.compare(confirm_dir(run_dir, confirm["subjects"], confirm.get("quick", True)),
                                    "debian" in confirm["subjects"])
            if again is not None:
                confirm = {**confirm, **again}
                state["notes"].append("the kept confirmation was compared again from its measurements by this "
                                      "version's statistics")
        if confirm is not None:
            state["confirm_run"] = confirm["vs_base"]
            state["confirm"] = {"subjects": confirm["subjects"], "vs_base": confirm["vs_base"],
                                "vs_debian": confirm.get("vs_debian"), "quick": confirm.get("quick", True)}
            # Judged again by this session's rule: the measurements are the record, the verdict follows the rule.
            verdicts = {c: confirm_verdict(c, confirm["vs_base"], settings.winner) for c in confirm["verdicts"]}
            for cid, v in verdicts.items():
                if cid in entries:
                    entries[cid]["confirm"] = v
            winners_c = [by_id[c] for c, v in verdicts.items() if v["wins"] and c in by_id]
            if winners_c:
                def rank(p: PlannedCandidate) -> float:
                    cid = p.candidate.id
                    by_latency = settings.winner == "latency"
                    return verdicts[cid]["latency"] if by_latency else entries[cid]["screen"]["geomean"]
                best = min(winners_c, key=rank)

    if best is not None:
        cid = best.candidate.id
        vs_debian = confirm.get("vs_debian")
        header = best_header(run=run_dir.name, command=state["command"], cand=best.candidate, base=base,
                             vs_base=_pick(confirm["vs_base"], cid), guard_vs_base=_pick(confirm["vs_base"], cid,
                                                                                         "guard"),
                             vs_debian=_pick(vs_debian, cid) if vs_debian else None,
                             guard_vs_debian=_pick(vs_debian, cid, "guard") if vs_debian else None,
                             rule=settings.winner,
                             count_ratio=entries[cid]["screen"]["geomean"],
                             cost={"builds": sum(1 for r in log.records if r.get("phase") == "build"
                                                 and r.get("verdict") != "skipped"),
                                   "minutes": sum(r.get("seconds", 0) or 0 for r in log.records) / 60})
        dest = write_best(run_dir / "best.toml", best.candidate, base_ref=base, header=header)
        state["best"] = {"id": cid, "label": f"{best.candidate.dimension}={best.candidate.label}", "file": str(dest)}
        if write_profile:
            name = run_dir.name if run_dir.name.startswith("autotune") else f"autotune-{run_dir.name}"
            copy = unique_path(PROFILES_DIR / f"{safe_name(name)}.toml")
            shutil.copyfile(dest, copy)
            state["best"]["copy"] = str(copy)
        log.add({"id": cid, "phase": "best", "file": str(dest), "verdict": "best"})
    return finish()


def _pick(comparisons: Mapping | None, name: str, section: str = "latency") -> dict | None:
    """The comparison.json entry of `name` in one section (latency or guard)."""
    return next((c for c in (comparisons or {}).get(section, []) if c["changed"] == name), None)
