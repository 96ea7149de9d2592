"""What an image is made of: its fixed paths, its inputs (`ImageInputs`), its entrypoint, environment and labels."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import manifest as manifest_mod
from ..core.paths import REPRODUCIBLE_EPOCH, WorkArea
from ..errors import HostpgoError
from ..pipeline.sources import sha256_of

IMAGE_SCHEMA = 2
"""Version of hostpgo-image.json (2: real layers, each layer's digest and the manifest digest recorded)."""
ROOT = "/opt/hostpgo"
PYTHON_DIR = f"{ROOT}/python"
VENV_DIR = f"{ROOT}/venv"
HOST_DIR = f"{ROOT}/host"
DATA_DIR = "/var/lib/hostpgo"
IMAGE_TOOLS = {"mmdebstrap": "mmdebstrap", "umoci": "umoci", "chroot": "coreutils", "ldd": "libc-bin",
               "dpkg": "dpkg", "tar": "tar"}
"""Commands the image stages run, with the Debian package that provides each."""
EXCLUDE_FROM_PREFIX = ("lib/python{minor}/test",)
"""Left out of the image: CPython's own test suite (already run by the build's verify stage)."""
DEFAULT_CMD = ("workload", "serve-mixed", "--json", "--check-golden")
"""What `docker run IMAGE` does without arguments: a serving workload that checks its own golden tokens."""
LAYER_NAMES = ("base", "python", "venv", "runtime")
"""The image's layers, bottom to top."""


class ImageError(HostpgoError):
    """The image cannot be built from these inputs or on this host; the message says what would fix it."""


def epoch_iso(epoch: str | int = REPRODUCIBLE_EPOCH) -> str:
    """RFC 3339 form of a SOURCE_DATE_EPOCH: every `created` in the image config."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))


@dataclass(frozen=True)
class AptSource:
    """One binary package source of the host (a `deb` line)."""

    uri: str
    """Mirror URL."""
    suite: str
    """Release name (`bookworm`, `bookworm-security`)."""
    components: tuple[str, ...]
    """Archive areas (`main`, `contrib`)."""

    def line(self) -> str:
        return f"deb {self.uri} {self.suite} {' '.join(self.components)}"


@dataclass(frozen=True)
class ImageInputs:
    """Everything the image plan needs (a unit test makes these up; nothing here runs a command)."""

    build: str
    """The build's profile name (`workload-pgo-lto`)."""
    build_id: str
    """The installed build's id (`cpython-3.11.2-workload-pgo-lto`)."""
    prefix: Path
    """The installed prefix shipped as the python layer."""
    build_manifest: Mapping[str, Any]
    """The prefix's hostpgo-manifest.json."""
    settings_name: str
    """Host settings the entrypoint applies: a name shipped under /opt/hostpgo/host."""
    settings: Mapping[str, Any]
    """Their resolved values (`python -m hostenv show`)."""
    settings_files: tuple[Path, ...]
    """Host settings files shipped under /opt/hostpgo/host."""
    packages: tuple[str, ...] | None
    """Debian packages installed into the base beyond minbase; None when not resolved yet (a dry run does not
    run the ldd + dpkg -S scan that finds them)."""
    sources: tuple[AptSource, ...]
    """The host's apt sources: the base is made from the same mirrors."""
    requirements: tuple[str, ...]
    """What the venv installs besides this project (its dependencies and `runtime` extra)."""
    work: WorkArea
    """The work area: base tarballs, wheels and images live under `images/`."""
    tag: str
    """Image reference (`hostpgo/workload-pgo-lto:default`)."""
    verify_workloads: tuple[str, ...]
    """Workloads whose golden tokens the image must reproduce through its entrypoint."""
    unresolved: tuple[str, ...] = ()
    """Sonames some shipped object needs that this host lacks too (device plugins); not a verify failure."""
    archive: Path | None = None
    """Where to write a docker-archive (`--archive`), or None."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    allocator_builds: tuple[Path, ...] = ()
    """hostpgo-built allocator prefixes the host settings name (`allocator.build`), shipped under
    DATA_DIR/install/<name> so the entrypoint's hostenv finds them there ($HOSTPGO_HOME is DATA_DIR)."""
    """Printed with the plan."""
    wheels: tuple[Path, ...] = ()
    """Rewritten wheels the venv installs instead of the stock builds of their distributions (the ones
    bolt-wheel's decision kept); put into the venv's wheelhouse and named in the image record."""

    @property
    def minor(self) -> str:
        return ".".join(str(self.build_manifest.get("version", "3.11")).split(".")[:2])


def entrypoint(settings_name: str) -> list[str]:
    py = f"{VENV_DIR}/bin/python"
    return [py, "-m", "hostenv", "exec", settings_name, "--", py, "-m", "runtime"]


def image_env(settings: Mapping[str, Any]) -> dict[str, str]:
    """The image's environment (config Env), also the environment of every chroot step."""
    env = {"PATH": f"{VENV_DIR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "LANG": "C.UTF-8", "HOSTPGO_HOME": DATA_DIR, "HOSTPGO_HOST_PROFILES": HOST_DIR}
    if (settings.get("startup") or {}).get("precompile"):
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # the shipped bytecode is what runs; nothing is rewritten
    return env


def labels(inp: ImageInputs) -> dict[str, str]:
    """OCI annotations of the config; `created` is the fixed epoch, so the config digest is reproducible."""
    return {"org.opencontainers.image.title": f"hostpgo {inp.build}",
            "org.opencontainers.image.description": f"CPython {inp.build_manifest.get('version')} built with "
                                                    f"hostpgo profile {inp.build}, host settings {inp.settings_name}",
            "org.opencontainers.image.created": epoch_iso(),
            "io.hostpgo.build": inp.build_id, "io.hostpgo.profile": inp.build,
            "io.hostpgo.host-settings": inp.settings_name,
            "io.hostpgo.build-manifest-sha256": sha256_of(inp.prefix / manifest_mod.FILE_NAME),
            **({"io.hostpgo.wheels": " ".join(w.name for w in inp.wheels)} if inp.wheels else {})}


def tag_slug(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", tag).strip("-")


def layout_tag(tag: str) -> str:
    """The OCI layout's tag: the part after the last `:` of `repo:tag`."""
    return tag.rsplit(":", 1)[-1] if ":" in tag.rsplit("/", 1)[-1] else "latest"


def image_dir(inp: ImageInputs, key: str) -> Path:
    """Never reused for other inputs: the name carries the assembly key."""
    return inp.work.root / "images" / f"{tag_slug(inp.tag)}-{key[:12]}"


def oci_arch(machine: str) -> str:
    """GOARCH spelling of `platform.machine()`, as the OCI config's `architecture` wants it."""
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "riscv64": "riscv64",
            "ppc64le": "ppc64le", "s390x": "s390x"}.get(machine, machine)
