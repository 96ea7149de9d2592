"""Verifying a finished image the way it will run: unpacked again from the layout (umoci), chrooted, no shared
library missing, and every verify workload reproducing its golden tokens through the image's entrypoint."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hostpgo.runner import Runner

from ..pipeline.training import last_json
from . import oci
from .model import DEFAULT_CMD, ROOT, ImageError
from .rootfs import chroot_argv, mounted

LDD_SCAN = f"find {ROOT} -name '*.so*' -type f -exec ldd {{}} + 2>/dev/null | grep 'not found' || true"
"""Run in the unpacked image: every shared object's unresolved libraries."""


def missing_in_image(ldd_lines: Sequence[str], unresolved_on_host: Sequence[str]) -> list[str]:
    """Sonames `ldd` inside the image cannot find, less those the host could not find either."""
    names = set()
    for ln in ldd_lines:
        if "not found" in ln and "=>" in ln:
            names.add(ln.split("=>", 1)[0].strip())
    return sorted(names - set(unresolved_on_host))


def check_digests(layout: Path, tag: str, expected: oci.ImageDigests | dict[str, Any]) -> None:
    """The layout holds the image the assembly recorded (same manifest digest, same layers)."""
    rec = expected.record() if isinstance(expected, oci.ImageDigests) else expected
    digest, manifest, _config = oci.read_image(layout, tag)
    layers = [layer["digest"] for layer in manifest["layers"]]
    if digest != rec["manifest_digest"] or layers != [layer["digest"] for layer in rec["layers"]]:
        raise ImageError(f"{layout}: image {tag} is {digest} with layers {layers}, but the assembly recorded "
                         f"{rec['manifest_digest']}; the layout was changed after it was built")


def verify_layout(layout: Path, tag: str, scratch: Path, runner: Runner, *, workloads: Sequence[str],
                  unresolved: Sequence[str]) -> dict[str, Any]:
    """Unpack `layout:tag` into `scratch` and run the checks; returns {"workloads": [...], "entrypoint": [...]}.

    Raises ImageError naming what failed. `scratch` is removed afterwards.
    """
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        runner.run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(scratch)], timeout=3600)
        spec = json.loads((scratch / "config.json").read_text())
        proc = spec["process"]
        env = dict(e.split("=", 1) for e in proc["env"])
        entry = list(proc["args"][:len(proc["args"]) - len(DEFAULT_CMD)])
        rootfs = scratch / "rootfs"
        results = []
        with mounted(rootfs, runner):
            lines: list[str] = []
            runner.run(chroot_argv(rootfs, env, ["/bin/sh", "-c", LDD_SCAN]),
                       timeout=900, collect=lines)
            missing = missing_in_image(lines, unresolved)
            if missing:
                raise ImageError(f"image {layout}: shared libraries found on this host are missing in the "
                                 f"image: {', '.join(missing[:20])}")
            for name in workloads:
                lines = []
                rc = runner.run(chroot_argv(rootfs, env, [*entry, "workload", name, "--json", "--check-golden"]),
                                timeout=1800, ok_codes=(0, 1), collect=lines)
                rec = last_json(lines) or {}
                hs = rec.get("host_settings") or {}
                results.append({"name": name, "exit_code": rc, "token_digest": rec.get("token_digest"),
                                "golden_match": rec.get("golden_match"),
                                "allocator_in_effect": hs.get("allocator_in_effect"),
                                "host_settings": hs.get("summary")})
                if hs.get("allocator_in_effect") is False:
                    raise ImageError(f"image {layout}: workload {name} ran without the allocator its host "
                                     f"settings ask for: {'; '.join(hs.get('warnings') or [])}")
                if rc != 0 or rec.get("golden_match") is not True:
                    raise ImageError(f"image {layout}: workload {name} did not reproduce its golden tokens "
                                     f"through the entrypoint (got {rec.get('token_digest')}); the image is "
                                     "not usable")
        return {"workloads": results, "entrypoint": entry}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
