"""Nox sessions for hostpgo: thin entry points over buildsys/, runtime/ and perf/."""

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]


def _install(session: nox.Session, *extras: str) -> None:
    spec = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", spec)


@nox.session
def toolchain(session: nox.Session) -> None:
    """Detect compilers and companion tools (`-- --install` installs LLVM 22 on Debian as root)."""
    _install(session)
    session.run("python", "-m", "buildsys", "toolchain", *session.posargs)


@nox.session(name="show-profile")
def show_profile(session: nox.Session) -> None:
    """Print a profile's effective settings and per-stage flags with their channels."""
    _install(session)
    session.run("python", "-m", "buildsys", "show-profile", *session.posargs)


@nox.session(name="build-cpython", default=False)
def build_cpython(session: nox.Session) -> None:
    """Rebuild CPython with a profile: `-- --profile NAME [--dry-run] [--source PATH] [--jobs N]`."""
    _install(session)
    session.run("python", "-m", "buildsys", "build", "cpython", *session.posargs)


@nox.session(default=False)
def pipeline(session: nox.Session) -> None:
    """The main job: build the baseline and the default optimized profile (and what later stages add)."""
    _install(session, "perf")
    session.run("python", "-m", "buildsys", "pipeline", *session.posargs)


@nox.session(default=False)
def image(session: nox.Session) -> None:
    # One docstring line for `nox -l`, split into two adjacent literals to fit the line length.
    """OCI image of an installed build, verified by chroot: """ \
        """`-- [--build PROFILE] [--host-settings NAME] [--archive F]`."""
    _install(session)
    session.run("python", "-m", "buildsys", "image", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Interleaved A/B measurement: `-- --interp NAME=PATH --interp ... [--workloads ...] [--quick] [--out RUN]`."""
    _install(session, "perf")
    session.run("python", "-m", "perf", "bench", *session.posargs)


@nox.session(default=False)
def report(session: nox.Session) -> None:
    """Regenerate a run's report.md, comparison.json and plots from its JSON: `-- RUN_DIR`."""
    _install(session, "perf")
    session.run("python", "-m", "perf", "report", *session.posargs)


@nox.session(name="bolt-check", default=False)
def bolt_check(session: nox.Session) -> None:
    """Tell whether ELF files (e.g. MindSpore's or Ray's libraries) can be BOLT-optimized: `-- FILE...`."""
    _install(session)
    session.run("python", "-m", "buildsys", "bolt-check", *session.posargs)


@nox.session(name="tune-host", default=False)
def tune_host(session: nox.Session) -> None:
    """Search allocator, launch mode, threads/affinity and GC settings for this machine:
    `-- --interp PY --budget SECONDS [--workloads ...]`."""
    _install(session, "perf")
    session.run("python", "-m", "perf", "tune-host", *session.posargs)


@nox.session(default=False)
def autotune(session: nox.Session) -> None:
    """Search build options within a budget and keep the winner as a profile:
    `-- --budget 2h [--space FILE] [--resume RUN] [--dry-run]`."""
    _install(session, "perf")
    session.run("python", "-m", "perf", "autotune", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and integration tests (no full CPython build); first installs, as root on Debian, the tools
    the tests use (LLVM 22, valgrind, perf, the allocators, the image tools), or names the apt line. The `ray` extra
    is installed so that the Ray executor's tests (marker `ray`) run."""
    _install(session, "runtime", "perf", "test", "ray")
    session.run("python", "-m", "buildsys", "toolchain", "--install", "--for", "tests")
    session.run("pytest", "-m", "not slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole tree (configuration in pyproject.toml)."""
    session.install("ruff==0.17.6")  # pinned: a newer ruff may add findings the tree was not checked against
    session.run("ruff", "check", ".", *session.posargs)


@nox.session(default=False)
def e2e(session: nox.Session) -> None:
    """Slow end-to-end tests: full CPython builds from the pinned source (tens of minutes)."""
    _install(session, "runtime", "perf", "test")
    session.run("pytest", "-m", "slow", "tests/e2e", *session.posargs)


@nox.session(name="build-extensions", default=False)
def build_extensions(session: nox.Session) -> None:
    """Rebuild extension wheels from their sdists with a profile's flags and PGO:
    `-- --profile NAME [--interp PYTHON] [--dry-run] PACKAGE[==VERSION]...` (one build per package)."""
    _install(session)
    args = list(session.posargs)
    packages, rest, i = [], [], 0
    while i < len(args):
        if args[i].startswith("-"):
            rest.append(args[i])
            if "=" not in args[i] and args[i] not in ("--dry-run",) and i + 1 < len(args):
                rest.append(args[i + 1])
                i += 1
        else:
            packages.append(args[i])
        i += 1
    if not packages:
        session.error("name at least one PACKAGE[==VERSION] after --")
    for pkg in packages:
        session.run("python", "-m", "buildsys", "build", "extension", "--package", pkg, *rest)
