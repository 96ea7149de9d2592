"""One virtual environment per interpreter under test, all installed from the same wheelhouse.

The wheelhouse is built once per Python ABI (cache tag) with `pip wheel`; every venv installs
from it with `--no-index`, so the interpreters run identical third-party code and this project's
own wheel. A stamp in each venv records what it was installed from; a matching stamp skips work.

Precompiled pycs are a property of a venv, not of a process: a subject whose host settings say
`startup.precompile = true` gets a venv of its own per pyc flavour (`-pyc-<bytecode>[-no-debug-ranges]`
in its name), precompiled after installing with `<venv>/bin/python -m hostenv precompile
<settings>` (the command the image build runs) and stamped, so no subject runs on pycs that another
subject's settings wrote. Subjects without it share the venv pip compiled (timestamp pycs).

A subject with replaced wheels (`--interp NAME=PY+wheel:W.whl`) also gets a venv of its own
(`-whl-<digest10>` in its name, the digest over the wheels' sha256): it installs the same requirement
set from the same wheelhouse with the given wheel standing in for the wheelhouse's build of its
distribution. The wheel must replace a distribution the venv installs anyway, of the same public
version (`2.10.0+bolt.1a2b3c4d` for `2.10.0`), so the A/B compares one release's two builds; which files
differ from the stock wheel (their RECORD hashes) is recorded in run.json.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from buildsys.core.paths import REPRODUCIBLE_EPOCH  # the image builds the same wheel with the same epoch
from hostpgo import runner

from .errors import CommandError, SpecError
from .interpreters import WHEEL_FILE_RE, WHEEL_MARK, Interpreter, ReplacedWheel, normalize_dist
from .workspace import perf_area, safe_name

STAMP = "hostpgo-perf-venv.json"
PRECOMPILE_STAMP = "hostpgo-precompile.json"
PRECOMPILE_SETTINGS = "hostpgo-precompile.toml"


@dataclass(frozen=True)
class Env:
    """A ready venv for one interpreter."""

    interp: Interpreter
    root: Path
    python: Path
    wheelhouse_digest: str
    pycs: str | None = None
    """The pyc flavour precompiled into this venv (`pyc_flavour`), None for pip's own timestamp pycs."""
    precompiled: dict | None = None
    """The summary `hostenv precompile` printed (files, mode, seconds), when it ran for this venv."""
    wheels: tuple[dict, ...] = ()
    """Per replaced wheel: what it stands in for and which files differ (`replacement`), for run.json."""


def pyc_flavour(interp: Interpreter) -> str | None:
    """The pycs a subject's host settings ask its venv to hold: None (as pip wrote them) when
    startup.precompile is off, else `<bytecode>` plus `-no-debug-ranges` when compiled without columns."""
    st = (interp.host_settings or {}).get("startup") or {}
    if not st.get("precompile"):
        return None
    return str(st.get("bytecode", "timestamp")) + ("-no-debug-ranges" if st.get("no_debug_ranges") else "")


def venv_dir(interp: Interpreter) -> Path:
    """Where a subject's venv lives: one per executable, and per pyc flavour."""
    flavour = pyc_flavour(interp)
    return perf_area() / "venvs" / (f"{safe_name(interp.name)}-{interp.exe_sha256[:10]}"
                                     + (f"-pyc-{flavour}" if flavour else "")
                                     + (f"-whl-{interp.wheels_digest[:10]}" if interp.wheels else ""))


def stock_wheel(house: Path, distribution: str) -> Path | None:
    """The wheelhouse's wheel of a distribution (PEP 503 names compared), or None when the set has none."""
    for whl in sorted(house.glob("*.whl")):
        m = WHEEL_FILE_RE.match(whl.name)
        if m and normalize_dist(m["dist"]) == distribution:
            return whl
    return None


def wheel_record(wheel: Path) -> dict[str, str]:
    """A wheel's RECORD as path -> hash text, without its .dist-info entries (their directory carries the
    version, so they differ between any two versions)."""
    with zipfile.ZipFile(wheel) as z:
        name = next((n for n in z.namelist() if n.endswith(".dist-info/RECORD")), None)
        if name is None:
            raise SpecError(f"{wheel}: no .dist-info/RECORD: not a wheel")
        text = z.read(name).decode("utf-8")
    return {row[0]: row[1] for row in csv.reader(io.StringIO(text))
            if row and ".dist-info/" not in row[0] and len(row) > 1}


def replacement(interp: Interpreter, wheel: ReplacedWheel, house: Path, extras: tuple[str, ...]) -> dict:
    """Check one replaced wheel against the wheelhouse and say what it replaces (reads files, runs nothing).

    Refused (SpecError naming `--interp` and `+wheel:`): a distribution the venv's requirement set does not
    hold (the wheel would be added, not swapped), or another public version than the stock wheel's."""
    flag = f"--interp {interp.name}: {WHEEL_MARK}{wheel.path}"
    stock = stock_wheel(house, wheel.distribution)
    if stock is None:
        raise SpecError(f"{flag}: distribution {wheel.distribution!r} is not in this venv's requirement set "
                        f"({requirement(extras)}; the wheelhouse {house} holds no {wheel.distribution} wheel): "
                        f"{WHEEL_MARK} replaces a distribution the venv installs, it does not add one")
    m = WHEEL_FILE_RE.match(stock.name)
    stock_version = m["version"] if m else "?"
    if stock_version.split("+", 1)[0] != wheel.public_version:
        raise SpecError(f"{flag}: version {wheel.version} is not a build of the venv's {wheel.distribution} "
                        f"{stock_version} ({stock.name}): the A/B would compare two releases, not two builds")
    new, old = wheel_record(Path(wheel.path)), wheel_record(stock)
    return {"distribution": wheel.distribution, "version": wheel.version, "file": wheel.file_name,
            "path": wheel.path, "sha256": wheel.sha256, "replaces": stock.name,
            "replaces_sha256": hashlib.sha256(stock.read_bytes()).hexdigest(),
            "changed_files": sorted(p for p in new if p in old and new[p] != old[p]),
            "only_in_replacement": sorted(set(new) - set(old)), "only_in_stock": sorted(set(old) - set(new))}


_INSTALLED_VERSION = "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))"



def _precompile(interp: Interpreter, root: Path, py: Path, digest: str, log: Path) -> dict:
    """Precompile a venv as the subject's settings ask, unless its stamp shows it was, for the same install."""
    import hostenv

    stamp_path = root / PRECOMPILE_STAMP
    settings = hostenv.HostSettings.from_json(interp.host_settings or {})
    want = {"flavour": pyc_flavour(interp), "wheelhouse": digest, "exe_sha256": interp.exe_sha256}
    have = json.loads(stamp_path.read_text()) if stamp_path.is_file() else None
    if have and {k: have.get(k) for k in want} == want:
        return have["summary"]
    stamp_path.unlink(missing_ok=True)
    toml = root / PRECOMPILE_SETTINGS
    toml.write_text(settings.to_toml([f"startup settings of perf subject {interp.name}, for its venv's pycs"]))
    # Run in the venv's directory: `-m` puts the working directory first on sys.path, and from a source checkout
    # it would import (and precompile) the checkout's runtime/ instead of the venv's.
    proc = runner.capture([py, "-m", "hostenv", "precompile", toml], cwd=root, log=log, timeout=3600)
    try:
        summary = json.loads(proc.stdout)
    except ValueError as exc:
        raise CommandError(f"{py} -m hostenv precompile printed no JSON summary", argv=[str(py)],
                           log_tail=proc.stdout[-2000:]) from exc
    stamp_path.write_text(json.dumps({**want, "summary": summary}, indent=1))
    return summary


def project_root() -> Path:
    """The source tree holding pyproject.toml (this package's parent)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise CommandError(f"perf/ is not inside a source tree with pyproject.toml ({root}); "
                           "venvs are built from the project's own wheel")
    return root


PROJECT = "hostpgo"
"""This project's distribution name: a subject may run a rebuilt wheel of it (`pipeline --stack`'s step (d))."""


def requirement(extras: tuple[str, ...]) -> str:
    return f"{PROJECT}[{','.join(extras)}]" if extras else PROJECT


def install_requirements(wheels: Sequence[ReplacedWheel], extras: tuple[str, ...]) -> list[str]:
    """pip's requirements for a venv (pure): the project with `extras` and every given wheel; where one of them is
    the project's own rebuilt wheel, that file takes the extras (`<path>[perf,runtime]`) in place of the
    wheelhouse's `hostpgo[...]`."""
    own = [w for w in wheels if w.distribution == PROJECT]
    tail = ",".join(extras)
    reqs = [f"{w.path}[{tail}]" if w in own and extras else w.path for w in wheels]
    return reqs if own else [requirement(extras), *reqs]


def _digest_dir(path: Path) -> str:
    h = hashlib.sha256()
    for whl in sorted(path.glob("*.whl")):
        h.update(whl.name.encode())
        h.update(hashlib.sha256(whl.read_bytes()).digest())
    return h.hexdigest()


def _make_venv(interp: Interpreter, root: Path, log: Path) -> Path:
    py = root / "bin" / "python"
    if not py.exists():
        if root.exists():
            shutil.rmtree(root)
        runner.capture([interp.python, "-m", "venv", root], log=log, timeout=600)
    return py



def build_wheelhouse(builder_python: Path, cache_tag: str, extras: tuple[str, ...], log: Path) -> Path:
    """Wheels for the project and its dependencies, for one ABI; the project's wheel is rebuilt each call."""
    house = perf_area() / "wheelhouse" / safe_name(cache_tag or "unknown")
    deps_stamp = house / ".deps.json"
    src = project_root()
    pyproject_digest = hashlib.sha256((src / "pyproject.toml").read_bytes()).hexdigest()
    want = {"extras": sorted(extras), "pyproject": pyproject_digest}
    house.mkdir(parents=True, exist_ok=True)
    fresh = house / ".project"
    if fresh.exists():
        shutil.rmtree(fresh)
    # A fixed zip timestamp makes the wheel a function of the sources alone, so an unchanged project
    # keeps the wheelhouse digest: the venvs are not reinstalled and finished counter runs can be reused.
    runner.capture([builder_python, "-m", "pip", "wheel", "--no-deps", "-w", fresh, src], log=log, timeout=900,
              env={"SOURCE_DATE_EPOCH": REPRODUCIBLE_EPOCH})
    for old in house.glob("hostpgo-*.whl"):
        old.unlink()
    for whl in fresh.glob("hostpgo-*.whl"):
        whl.replace(house / whl.name)
    shutil.rmtree(fresh)
    have = json.loads(deps_stamp.read_text()) if deps_stamp.is_file() else None
    if have != want:
        # Dependencies come from the index once; the project's own wheel is already here.
        runner.capture([builder_python, "-m", "pip", "wheel", "-w", house, "--find-links", house,
                   f"{src}[{','.join(extras)}]" if extras else str(src)], log=log, timeout=3600)
        deps_stamp.write_text(json.dumps(want))
    return house


def prepare(interps: list[Interpreter], extras: tuple[str, ...], log: Path) -> list[Env]:
    """Create or refresh one venv per interpreter, installing `hostpgo[extras]` from the shared wheelhouse."""
    envs: list[Env] = []
    houses: dict[str, Path] = {}
    by_exe: dict[tuple[str, str | None], Env] = {}
    for interp in interps:
        key = (interp.exe_sha256, pyc_flavour(interp), interp.wheels_digest)
        if key in by_exe:
            # The same executable under other host settings (and the same pycs): one venv serves them.
            envs.append(replace(by_exe[key], interp=interp))
            continue
        root = venv_dir(interp)
        py = _make_venv(interp, root, log)
        if interp.cache_tag not in houses:
            houses[interp.cache_tag] = build_wheelhouse(py, interp.cache_tag, extras, log)
        house = houses[interp.cache_tag]
        digest = _digest_dir(house)
        replaced = tuple(replacement(interp, w, house, extras) for w in interp.wheels)
        stamp_path = root / STAMP
        stamp = {"interpreter": interp.python, "exe_sha256": interp.exe_sha256,
                 "extras": sorted(extras), "wheelhouse": digest,
                 **({"wheels": interp.wheels_digest} if interp.wheels else {})}
        have = json.loads(stamp_path.read_text()) if stamp_path.is_file() else None
        if have != stamp:
            # One resolution: the given wheels are requirements of their own, so pip takes them instead of the
            # wheelhouse's build of the same distribution (a local version satisfies `==2.10.0`). The project's own
            # rebuilt wheel carries the extras itself: `hostpgo[...]` beside it would be a second hostpgo 0.1.0.
            runner.capture([py, "-m", "pip", "install", "--no-index", "--find-links", house,
                            *install_requirements(interp.wheels, extras)], log=log, timeout=3600)
            for w in interp.wheels:
                got = runner.capture([py, "-c", _INSTALLED_VERSION, w.distribution], log=log,
                                     timeout=120).stdout.strip()
                if got != w.version:
                    raise CommandError(f"{root}: {w.distribution} {got} is installed, not the {WHEEL_MARK} wheel's "
                                       f"{w.version}", argv=[str(py), "-m", "pip", "install", w.path])
            if not any(w.distribution == PROJECT for w in interp.wheels):  # never over the rebuilt project wheel
                runner.capture([py, "-m", "pip", "install", "--no-index", "--find-links", house,
                                "--force-reinstall", "--no-deps", PROJECT], log=log, timeout=600)
            stamp_path.write_text(json.dumps(stamp, indent=1))
            (root / PRECOMPILE_STAMP).unlink(missing_ok=True)  # pip wrote its own pycs again
        flavour = pyc_flavour(interp)
        summary = _precompile(interp, root, py, digest, log) if flavour else None
        envs.append(Env(interp=interp, root=root, python=py, wheelhouse_digest=digest, pycs=flavour,
                        precompiled=summary, wheels=replaced))
        by_exe[key] = envs[-1]
    return envs
