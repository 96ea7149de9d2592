"""The one layered-TOML loader (build profiles, host settings, search spaces): a schema of sections and keys,
one precedence (defaults -> extends chain -> the file -> scoped tables -> environment -> command line), one
parser for `section.key=value` overrides, and errors that name where the bad value came from."""

from __future__ import annotations

import copy
import shlex
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SettingsError

META_KEYS = ("description", "extends")
"""Top-level keys every layered file may have besides its sections."""


@dataclass(frozen=True)
class Key:
    """One allowed key: its default, what it means, and what values it takes.

    `kind` is a type (or `list` for a list of strings); `allowed` a closed set of values; `check` a
    predicate described by `check_doc`; `convert` turns an accepted raw value into the model's value
    and raises ValueError with a message saying what would be accepted.
    """

    kind: type | tuple[type, ...] | None
    default: Any
    doc: str
    allowed: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None
    check_doc: str = ""
    convert: Callable[[Any], Any] | None = None

    def coerce(self, value: Any) -> Any:
        """The model's value for `value`; ValueError naming what is allowed."""
        kind = self.kind
        if kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"must be a list of strings, got {value!r}")
            if self.check is not None and not self.check(value):
                raise ValueError(f"has value {value!r}; each entry must be {self.check_doc}")
        elif kind is not None:
            if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
                names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
                raise ValueError(f"must be {names}, got {fmt(value)}"
                                 + (f"; allowed values: {fmt_allowed(self.allowed)}" if self.allowed else ""))
        if self.allowed is not None and value not in self.allowed:
            raise ValueError(f"has value {fmt(value)}; allowed values: {fmt_allowed(self.allowed)}")
        if kind is not list and self.check is not None and not self.check(value):
            raise ValueError(f"has value {fmt(value)}; allowed values: {self.check_doc}")
        return self.convert(value) if self.convert is not None else value

    def default_value(self) -> Any:
        return copy.deepcopy(self.default)


Schema = Mapping[str, Mapping[str, Key]]
"""section -> key -> Key."""


def fmt(v: Any) -> str:
    """A value as TOML would write it (for messages and generated docs)."""
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, str):
        return repr(v)
    return str(v)


def fmt_allowed(allowed: Sequence[Any] | None) -> str:
    return ", ".join(fmt(a) for a in allowed or ())


@dataclass(frozen=True)
class Origin:
    """Where a value came from: the schema's default, a file, an environment variable or a command-line flag."""

    kind: str
    """default | file | env | cli"""
    where: str
    """The file's path, the variable's name or the flag."""
    item: str = ""
    """The `section.key=value` text of an override."""

    def __str__(self) -> str:
        if self.kind == "file":
            return self.where
        if self.kind == "env":
            return f"environment variable {self.where}" + (f" ({self.item!r})" if self.item else "")
        if self.kind == "cli":
            return f"command line {self.where}" + (f" {self.item}" if self.item else "")
        return "default"

    @property
    def tag(self) -> str:
        """Short form kept in resolved models: `env:ITEM`, `cli:ITEM`."""
        return f"{self.kind}:{self.item}" if self.item else f"{self.kind}:{self.where}"


DEFAULT = Origin("default", "")


@dataclass(frozen=True)
class Layered:
    """The result of resolving: typed values per section, and where each came from."""

    values: dict[str, dict[str, Any]]
    origins: dict[str, Origin]
    """`section.key` -> the layer that set it last."""
    files: tuple[Path, ...] = ()
    """Files read, most derived first (the file, then its `extends` chain)."""
    description: str = ""
    overrides: tuple[Origin, ...] = ()
    """The environment and command-line overrides applied, in order."""
    data: Mapping[str, Any] = field(default_factory=dict)
    """The most derived file's raw top-level tables that are not sections (e.g. `targets`), for callers."""

    def get(self, dotted: str) -> Any:
        section, _, key = dotted.rpartition(".")
        return self.values[section][key]


class Loader:
    """Reads and resolves layered TOML files of one schema.

    `find(ref, relative_to)` turns a name or path (from the command line, or from `extends` in a file) into
    a file path, raising `error` naming what is known. `scopes` names top-level tables whose sub-tables
    hold section overrides for one scope (profiles: `[targets.NAME]`), with the allowed scope names.
    """

    def __init__(self, schema: Schema, *, what: str, find: Callable[[str, Path | None], Path],
                 error: type[SettingsError] = SettingsError,
                 scopes: Mapping[str, Sequence[str]] | None = None,
                 extra_top: Mapping[str, type] | None = None) -> None:
        self.schema = schema
        self.what = what
        self.find = find
        self.error = error
        self.scopes = dict(scopes or {})
        self.extra_top = dict(extra_top or {})

    # ------------------------------------------------------------------ reading
    def read(self, path: Path) -> dict[str, Any]:
        try:
            with Path(path).open("rb") as fh:
                return tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise self.error(f"{path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise self.error(f"{path}: cannot read {self.what}: {exc.strerror}") from None

    def validate(self, where: str, data: Mapping[str, Any], *, top: bool = True) -> None:
        """Unknown sections and keys and bad values are errors naming `where`, the key and what is allowed."""
        for sect, body in data.items():
            if top and sect in META_KEYS:
                if not isinstance(body, str):
                    raise self.error(f"{where}: key '{sect}' must be a string")
                continue
            if top and sect in self.scopes:
                self._validate_scopes(where, sect, body)
                continue
            if top and sect in self.extra_top:
                if not isinstance(body, self.extra_top[sect]):
                    raise self.error(f"{where}: key '{sect}' must be a {self.extra_top[sect].__name__}")
                continue
            if sect not in self.schema:
                allowed = sorted(s for s in self.schema if "." not in s) + (
                    sorted({*META_KEYS, *self.scopes, *self.extra_top}) if top else [])
                raise self.error(f"{where}: unknown key '{sect}'; allowed: {', '.join(allowed)}")
            if not isinstance(body, dict):
                raise self.error(f"{where}: '{sect}' must be a table ([{sect}])")
            for name, section in self.sections(sect, body):
                for key, value in section.items():
                    self.check(where, name, key, value)

    def sections(self, sect: str, body: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
        """A top-level table split into its sections: `[bolt]` holds the keys of `bolt` and, when the schema
        has a `bolt.stock` section, the sub-table `[bolt.stock]` as a section of its own."""
        own = {k: v for k, v in body.items() if f"{sect}.{k}" not in self.schema}
        out: list[tuple[str, Mapping[str, Any]]] = [(sect, own)]
        for k, v in body.items():
            name = f"{sect}.{k}"
            if name in self.schema:
                if not isinstance(v, dict):
                    raise self.error(f"'{name}' must be a table ([{name}])")
                out += self.sections(name, v)
        return out

    def _validate_scopes(self, where: str, name: str, body: Any) -> None:
        if not isinstance(body, dict):
            raise self.error(f"{where}: '{name}' must be a table")
        for scope, sub in body.items():
            if scope not in self.scopes[name]:
                raise self.error(f"{where}: unknown key '{name}.{scope}'; allowed {name}: "
                                 f"{', '.join(self.scopes[name])}")
            if not isinstance(sub, dict):
                raise self.error(f"{where}: '{name}.{scope}' must be a table")
            self.validate(f"{where} [{name}.{scope}]", sub, top=False)

    def check(self, where: str, sect: str, key: str, value: Any) -> Any:
        """The typed value of `sect.key = value`, or an error naming `where` and the key."""
        if key not in self.schema[sect]:
            raise self.error(f"{where}: unknown key '{sect}.{key}'; allowed keys in [{sect}]: "
                             f"{', '.join(self.schema[sect])}")
        try:
            return self.schema[sect][key].coerce(value)
        except ValueError as exc:
            raise self.error(f"{where}: key '{sect}.{key}' {exc}") from None

    def chain(self, path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
        """The file and its `extends` ancestors, base first, each validated."""
        path = Path(path).resolve()
        if path in seen:
            raise self.error(f"{path}: 'extends' forms a cycle: {' -> '.join(str(p) for p in (*seen, path))}")
        data = self.read(path)
        self.validate(str(path), data)
        parent = data.get("extends")
        if parent is None:
            return [(path, data)]
        try:
            parent_path = self.find(parent, path.parent)
        except SettingsError as exc:
            raise self.error(f"{path}: key 'extends': {exc}") from None
        return self.chain(parent_path, (*seen, path)) + [(path, data)]

    # ------------------------------------------------------------------ overrides
    def parse_assignment(self, text: str, origin: Origin) -> tuple[str, str, Any]:
        """`section.key=value` (the value in TOML syntax, else a bare string) -> (section, key, typed value)."""
        dotted, sep, raw = text.partition("=")
        dotted = dotted.strip()
        if not sep or "." not in dotted:
            raise self.error(f"{origin}: {text!r} must look like section.key=value")
        sect, _, key = dotted.rpartition(".")
        if sect not in self.schema:
            raise self.error(f"{origin}: unknown key '{dotted}'; sections: {', '.join(self.schema)}")
        raw = raw.strip()
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        return sect, key, self.check(str(origin), sect, key, value)

    def env_items(self, environ: Mapping[str, str], var: str) -> list[str]:
        """The overrides in an environment variable: shell words, so a value may be quoted."""
        text = environ.get(var, "")
        try:
            return shlex.split(text)
        except ValueError as exc:
            raise self.error(f"environment variable {var}: {exc} in {text!r}") from None

    # ------------------------------------------------------------------ resolving
    def defaults(self) -> dict[str, dict[str, Any]]:
        return {s: {k: key.coerce(key.default_value()) if key.convert else key.default_value()
                    for k, key in keys.items()} for s, keys in self.schema.items()}

    def resolve(self, ref: str | Path | None, *, environ: Mapping[str, str] | None = None,
                env_var: str | None = None, sets: Sequence[str] = (), set_flag: str = "--set",
                scope: tuple[str, str] | None = None,
                env_layers: Sequence[tuple[Origin, str, str, Any]] = ()) -> Layered:
        """defaults -> `ref`'s extends chain (base first) -> `ref` -> its `[scope[0].scope[1]]` tables
        -> `env_layers` (caller-parsed variables) -> `env_var` items -> `sets` items."""
        values = self.defaults()
        origins: dict[str, Origin] = {}
        files: tuple[Path, ...] = ()
        description = ""
        data: Mapping[str, Any] = {}

        def put(origin: Origin, sect: str, key: str, value: Any) -> None:
            values[sect][key] = value
            origins[f"{sect}.{key}"] = origin

        if ref is not None:
            chain = self.chain(self.find(str(ref), None))
            for path, layer in chain:
                o = Origin("file", str(path))
                for top, table in layer.items():
                    if top in self.schema:
                        for sect, body in self.sections(top, table):
                            for key, value in body.items():
                                put(o, sect, key, self.check(str(path), sect, key, value))
                description = layer.get("description", description)
            if scope is not None:
                name, which = scope
                for path, layer in chain:
                    o = Origin("file", f"{path} [{name}.{which}]")
                    for top, table in layer.get(name, {}).get(which, {}).items():
                        for sect, body in self.sections(top, table):
                            for key, value in body.items():
                                put(o, sect, key, self.check(str(o), sect, key, value))
            files = tuple(p for p, _ in reversed(chain))
            data = {k: v for k, v in chain[-1][1].items() if k not in self.schema}
        applied: list[Origin] = []
        for origin, sect, key, raw in env_layers:
            put(origin, sect, key, self.check(str(origin), sect, key, raw))
            applied.append(origin)
        if env_var is not None:
            env = {} if environ is None else environ
            for item in self.env_items(env, env_var):
                o = Origin("env", env_var, item)
                put(o, *self.parse_assignment(item, o))
                applied.append(o)
        for item in sets:
            o = Origin("cli", set_flag, item)
            put(o, *self.parse_assignment(item, o))
            applied.append(o)
        return Layered(values, origins, files, description, tuple(applied), data)


def schema_reference(schema: Schema, *, title: str, intro: str = "") -> str:
    """A Markdown page documenting every section and key of a schema (defaults, allowed values, meaning)."""
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro.strip(), ""]
    for sect, keys in schema.items():
        lines += [f"## `[{sect}]`", "", "| key | default | allowed | meaning |", "|---|---|---|---|"]
        for name, key in keys.items():
            allowed = fmt_allowed(key.allowed) if key.allowed else (key.check_doc or _kind_doc(key.kind))
            doc = key.doc.replace("|", "\\|").replace("\n", " ")
            default = fmt(key.default).replace("|", "\\|")
            lines.append(f"| `{name}` | `{default}` | {allowed.replace('|', chr(92) + '|')} | {doc} |")
        lines.append("")
    return "\n".join(lines)


def _kind_doc(kind: type | tuple[type, ...] | None) -> str:
    if kind is list:
        return "list of strings"
    if kind is None:
        return "see meaning"
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__
