"""Exact instruction counts from callgrind output, turned into BOLT's pre-aggregated profile (pure: text in, text out).

Callgrind run with `--dump-instr=yes` writes one cost line per executed instruction and context:

    ob=/path/lib.so            the object the following cost lines belong to
    fn=0x0000000000001140      the function (a hex name in a stripped object)
    0x1140 0 100000            instruction address, source line, event counts (`events:` names them)
    calls=99999 0x1140 0       a call; the cost line right after it is the call's inclusive cost
    0x11b7 0 1403656           ... which belongs to the callee, so it is not this instruction's own count

Addresses are the object's own (link-time) virtual addresses: callgrind subtracts each object's load
bias. `file_bias` checks that against the library's executable segments (and takes the load base from
the process's maps where a callgrind build did not subtract it). Names may be compressed (`ob=(3) /p`,
later `ob=(3)`) and positions may be relative (`+4`, `-2`, `*`); both are understood.

BOLT's pre-aggregated format (perf2bolt --pa), as this module writes it for basic (no-LBR) events:

    E instructions             the event name
    S 1140 100000              a sample: hex address in the binary, count

perf2bolt `--pa --ba --allow-stripped -p FILE -o OUT.fdata LIB` reads it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from hostpgo.errors import InputError

EVENT_NAME = "instructions"
"""The event name written on the `E` line (perf's name for retired instructions)."""
_NAME_KEYS = ("ob=", "fl=", "fi=", "fe=", "fn=", "cob=", "cfi=", "cfl=", "cfn=")
_NAME_TABLE = {"ob=": "ob", "cob=": "ob", "fn=": "fn", "cfn=": "fn", "fl=": "fl", "fi=": "fl", "fe=": "fl",
               "cfi=": "fl", "cfl=": "fl"}
"""Compressed names: cob= shares ob='s table, cfn= fn='s, and every file key fl='s."""
_SKIP_NEXT = ("calls=", "jump=", "jcnd=")
"""Lines whose next cost line is not the current instruction's own cost."""


class CallgrindError(InputError):
    """A callgrind output this module cannot turn into a profile (wrong options, damaged file)."""


@dataclass(frozen=True)
class CallgrindProfile:
    """Own instruction counts per object and address, from one or more callgrind outputs."""

    event: str
    """The event counted (callgrind's name, e.g. Ir)."""
    counts: Mapping[str, Mapping[int, int]]
    """Object path (as `ob=` names it) -> instruction address -> count."""
    commands: tuple[str, ...] = ()
    """The `cmd:` line of each file read."""

    def total(self, obj: str) -> int:
        return sum(self.counts.get(obj, {}).values())

    @property
    def grand_total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


def _position(field_text: str, last: int, where: str) -> int:
    if field_text == "*":
        return last
    if field_text[0] in "+-":
        return last + int(field_text, 0 if field_text[1:].startswith("0x") else 10)
    try:
        return int(field_text, 0)
    except ValueError:
        raise CallgrindError(f"{where}: bad position {field_text!r}") from None


def parse(text: str, where: str = "callgrind output", event: str = "Ir") -> tuple[str, dict[str, dict[int, int]]]:
    """(the `cmd:` line, object -> address -> own count of `event`) of one callgrind output."""
    positions: list[str] | None = None
    events: list[str] | None = None
    names: dict[tuple[str, str], str] = {}
    obj = ""
    cmd = ""
    skip = False
    last = [0, 0]
    out: dict[str, dict[int, int]] = {}
    column = -1
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        head = line[0]
        if head.isdigit() or head in "+-*":
            if positions is None or events is None:
                raise CallgrindError(f"{where}:{lineno}: a cost line before the `positions:`/`events:` header")
            fields = line.split()
            npos = len(positions)
            for i in range(min(npos, len(fields))):  # a call's cost line moves the position too
                last[i] = _position(fields[i], last[i], f"{where}:{lineno}")
            if skip:
                skip = False
                continue
            values = fields[npos:]
            count = int(values[column]) if column < len(values) else 0
            if count:
                per = out.setdefault(obj, {})
                per[last[0]] = per.get(last[0], 0) + count
            continue
        if line.startswith(_SKIP_NEXT):
            skip = True
            continue
        key = next((k for k in _NAME_KEYS if line.startswith(k)), None)
        if key is not None:
            value = line[len(key):]
            kind = _NAME_TABLE[key]
            if value.startswith("("):
                ident, _, name = value[1:].partition(")")
                name = name.strip()
                if name:
                    names[(kind, ident)] = name
                else:
                    name = names.get((kind, ident), "")
                    if not name:
                        raise CallgrindError(f"{where}:{lineno}: {key}({ident}) used before it was named")
                value = name
            if key == "ob=":
                obj = value
            continue
        if line.startswith("positions:"):
            positions = line.split(":", 1)[1].split()
            if positions[:1] != ["instr"]:
                raise CallgrindError(f"{where}: positions are {' '.join(positions)!r}, not per instruction: "
                                     "run callgrind with --dump-instr=yes")
            last = [0] * len(positions)
        elif line.startswith("events:"):
            events = line.split(":", 1)[1].split()
            if event not in events:
                raise CallgrindError(f"{where}: event {event!r} not recorded (events: {' '.join(events)})")
            column = events.index(event)
        elif line.startswith("cmd:"):
            cmd = line.split(":", 1)[1].strip()
    if positions is None:
        raise CallgrindError(f"{where}: no `positions:` line: not a callgrind output")
    return cmd, out


def merge(parts: Iterable[tuple[str, Mapping[str, Mapping[int, int]]]], event: str = "Ir") -> CallgrindProfile:
    """Sum the counts of several outputs (one per training run or dump)."""
    total: dict[str, dict[int, int]] = {}
    cmds = []
    for cmd, counts in parts:
        cmds.append(cmd)
        for obj, per in counts.items():
            dst = total.setdefault(obj, {})
            for addr, n in per.items():
                dst[addr] = dst.get(addr, 0) + n
    return CallgrindProfile(event, total, tuple(cmds))


# ---------------------------------------------------------------------------------------------
# From callgrind's objects to the libraries BOLT rewrites.

@dataclass(frozen=True)
class ObjectMatch:
    """Which `ob=` object is which library, and how that was decided."""

    library: str
    """The library's name in the plan (its path inside the package)."""
    obj: str | None
    """The callgrind object, or None when the library never ran inside the measured window."""
    rule: str
    """`path` (same normalized path), `maps` (the process's maps named it), `basename` (the only object of
    that file name) or `absent`."""


def match_objects(objects: Iterable[str], libraries: Mapping[str, str],
                  loaded: Mapping[str, str] = {}) -> tuple[ObjectMatch, ...]:
    """Match each library (name -> path as installed) to one callgrind object.

    `loaded` maps a library name to the path the process's /proc/self/maps showed for it (the real path,
    when the installed path goes through a symlink). A base name shared by several objects is not guessed.
    """
    objs = list(objects)
    norm = {os.path.normpath(o): o for o in objs}
    by_base: dict[str, list[str]] = {}
    for o in objs:
        by_base.setdefault(os.path.basename(o), []).append(o)
    out = []
    for name, path in libraries.items():
        hit = norm.get(os.path.normpath(path))
        if hit is not None:
            out.append(ObjectMatch(name, hit, "path"))
            continue
        real = loaded.get(name)
        hit = norm.get(os.path.normpath(real)) if real else None
        if hit is not None:
            out.append(ObjectMatch(name, hit, "maps"))
            continue
        same = by_base.get(os.path.basename(path), [])
        if len(same) == 1:
            out.append(ObjectMatch(name, same[0], "basename"))
        else:
            out.append(ObjectMatch(name, None, "absent" if not same else f"ambiguous: {', '.join(same)}"))
    return tuple(out)


@dataclass(frozen=True)
class AddressMapping:
    """How callgrind's addresses of one object become addresses in the library file."""

    bias: int
    """Subtracted from every address (0: callgrind already gave link-time addresses)."""
    inside: int
    """Instructions (counted) that land in an executable segment of the file after the subtraction."""
    outside: int
    """Instructions that do not (dropped from the profile)."""


def _inside(addr: int, ranges: Sequence[tuple[int, int]]) -> bool:
    return any(lo <= addr < hi for lo, hi in ranges)


def file_bias(counts: Mapping[int, int], exec_ranges: Sequence[tuple[int, int]],
              load_base: int | None = None, *, min_fraction: float = 0.99) -> AddressMapping:
    """The bias that puts the counted addresses into the file's executable segments.

    `exec_ranges`: (start, end) virtual addresses of the file's PT_LOAD segments with E. `load_base`: where
    the process mapped the file (from /proc/self/maps), tried when the addresses are not link-time ones.
    Raises CallgrindError when neither puts `min_fraction` of the counts inside.
    """
    total = sum(counts.values())
    tried = []
    for bias in (0, *((load_base,) if load_base else ())):
        inside = sum(n for a, n in counts.items() if _inside(a - bias, exec_ranges))
        if total == 0 or inside >= min_fraction * total:
            return AddressMapping(bias, inside, total - inside)
        tried.append(f"bias {bias:#x}: {inside} of {total}")
    spans = ", ".join(f"{lo:#x}-{hi:#x}" for lo, hi in exec_ranges)
    raise CallgrindError(f"the counted addresses do not fall into the file's executable segments ({spans}); "
                         f"tried {'; '.join(tried)}: is it the same file the process loaded?")


def pre_aggregated(counts: Mapping[int, int], mapping: AddressMapping,
                   exec_ranges: Sequence[tuple[int, int]], event: str = EVENT_NAME) -> str:
    """BOLT's pre-aggregated text: `E <event>`, then `S <hex address> <count>` by address."""
    lines = [f"E {event}"]
    for addr in sorted(counts):
        at = addr - mapping.bias
        if counts[addr] and _inside(at, exec_ranges):
            lines.append(f"S {at:x} {counts[addr]}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LibraryProfile:
    """One library's share of the exact-count profile."""

    match: ObjectMatch
    instructions: int
    """Instructions executed in it inside the measured window."""
    addresses: int
    """Distinct instruction addresses with a count."""
    mapping: AddressMapping | None = None
    text: str = field(default="", repr=False)
    """The pre-aggregated profile (empty when the library did not run)."""
