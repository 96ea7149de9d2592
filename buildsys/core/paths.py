"""Where hostpgo keeps its work: sources cache, build trees, profile data, prefixes, stamps, logs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hostpgo import fsutil

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILES_DIR = REPO_ROOT / "profiles"
TASKS_DIR = PROFILES_DIR / "tasks"
PATCHES_DIR = REPO_ROOT / "patches"
REPRODUCIBLE_EPOCH = "315532800"
"""SOURCE_DATE_EPOCH for everything hostpgo packs (the project's wheel, the image's base): 1980-01-01, the
earliest time a zip entry can carry."""


@dataclass(frozen=True)
class WorkArea:
    """The work area (default `./.hostpgo`, moved by HOSTPGO_HOME); every path the engine writes."""

    root: Path

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> WorkArea:
        return cls(fsutil.work_root(environ))

    @property
    def sources(self) -> Path:
        """Verified source archives, named as in the pinned table."""
        return self.root / "sources"

    @property
    def apt(self) -> Path:
        """The private apt configuration and state used for `apt-get source`."""
        return self.root / "apt"

    @property
    def src(self) -> Path:
        """Unpacked and patched source trees, one per (archive, patch set)."""
        return self.root / "src"

    @property
    def build(self) -> Path:
        """Out-of-tree build directories, one per build variant."""
        return self.root / "build"

    @property
    def pgo(self) -> Path:
        """Per build: raw per-process profiles, training venvs and BOLT's work files (merged PGO profile data
        goes to the profile store, `profiles`)."""
        return self.root / "pgo"

    @property
    def profiles(self) -> Path:
        """The profile store: merged profile data named `<build id>-<key>.profdata`, each with a JSON sidecar."""
        return self.root / "profiles"

    @property
    def facts(self) -> Path:
        """Probed host facts (branch sampling, hardware counters), keyed by the probing tool's identity."""
        return self.root / "facts"

    @property
    def deps(self) -> Path:
        """Third-party packages the runtime needs, one directory per requirement set and Python version."""
        return self.root / "deps"

    @property
    def install(self) -> Path:
        """Final install prefixes, `<target>-<version>-<profile>`."""
        return self.root / "install"

    @property
    def ccache(self) -> Path:
        """ccache's cache (optimize.compiler_cache = "ccache"): shared by every build, so candidates hit."""
        return self.root / "ccache"

    @property
    def thinlto_cache(self) -> Path:
        """lld's ThinLTO caches, one directory per set of link flags (optimize.compiler_cache, clang ThinLTO)."""
        return self.root / "thinlto-cache"

    @property
    def stamps(self) -> Path:
        return self.root / "stamps"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def tmp(self) -> Path:
        """Scratch space on the same file system, so results can be published by rename."""
        return self.root / "tmp"
