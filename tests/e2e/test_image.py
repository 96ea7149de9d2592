"""End to end (slow, `nox -s e2e`): the OCI image of the generic-pgo-lto build, verified by chroot, and
reproducible: built again from the same inputs it has the same manifest, config and four layer digests.

It builds generic-pgo-lto first when it is not installed yet (stamps make that a no-op after
test_cpython_pipeline.py). Needs root and mmdebstrap/umoci/skopeo (`python -m buildsys toolchain --install`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from buildsys.core.paths import REPO_ROOT

pytestmark = pytest.mark.slow
WORK = Path(os.environ.get("HOSTPGO_HOME", REPO_ROOT / ".hostpgo")).resolve()


BUILD = "generic-pgo-lto"
ENV = {**os.environ, "HOSTPGO_HOME": str(WORK)}


def _installed_build() -> None:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("mmdebstrap", "umoci", "skopeo")):
        pytest.fail("the image needs root, mmdebstrap, umoci and skopeo: run `python -m buildsys toolchain "
                    "--install` as root first")
    prefix = WORK / "install" / f"cpython-3.11.2-{BUILD}"
    if not (prefix / "hostpgo-manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "buildsys", "build", "cpython", "--profile", BUILD],
                       cwd=REPO_ROOT, env=ENV, timeout=4 * 3600, check=True)


def _image(*extra: str) -> Path:
    """Build (or reuse) the image; the path of its hostpgo-image.json."""
    done = subprocess.run([sys.executable, "-m", "buildsys", "image", "--build", BUILD, *extra],
                          cwd=REPO_ROOT, check=False, env=ENV, timeout=3 * 3600, capture_output=True, text=True)
    print(done.stdout[-3000:], done.stderr[-3000:])
    assert done.returncode == 0, f"image build failed; logs in {WORK / 'logs'}"
    record_line = next(ln for ln in done.stdout.splitlines() if ln.startswith("image "))
    return Path(record_line.rsplit("record ", 1)[1])


def test_image_of_a_static_build_runs_its_golden_workloads_through_the_entrypoint(tmp_path: Path) -> None:
    _installed_build()
    archive = tmp_path / "image.tar"
    record = _image("--archive", str(archive))
    doc = json.loads(record.read_text())
    assert [w["name"] for w in doc["verify"]] and all(w["golden_match"] for w in doc["verify"])
    assert doc["entrypoint"][2:5] == ["hostenv", "exec", "default"]
    assert "libssl3" in doc["debian"]["packages"] and doc["python_packages"]["mindspore"] == "2.10.0"
    # The docker-archive holds the same image: skopeo reads it back.
    inspect = subprocess.run(["skopeo", "inspect", f"docker-archive:{archive}"], capture_output=True, text=True,
                             check=True)
    assert json.loads(inspect.stdout)["Labels"]["io.hostpgo.profile"] == "generic-pgo-lto"
    assert [layer["name"] for layer in doc["oci"]["layers"]] == ["base", "python", "venv", "runtime"]


def test_the_image_built_again_from_the_same_inputs_has_the_same_digests(tmp_path: Path) -> None:
    """Issue 16 #5: the image directory moved aside, the image built again with the base tarball and wheels
    reused: the same manifest, config and layer digests, and umoci reads back the same layout."""
    _installed_build()
    first_record = _image()
    first = json.loads(first_record.read_text())["oci"]
    aside = tmp_path / "first-image"
    shutil.move(str(first_record.parent), aside)
    second_record = _image()
    assert second_record == first_record  # the same assembly key names the same directory
    second = json.loads(second_record.read_text())["oci"]
    print(json.dumps({"first": first, "second": second}, indent=1))
    assert [layer["name"] for layer in second["layers"]] == ["base", "python", "venv", "runtime"]
    assert second["manifest_digest"] == first["manifest_digest"]
    assert second["config_digest"] == first["config_digest"]
    assert ([(x["digest"], x["diff_id"]) for x in second["layers"]]
            == [(x["digest"], x["diff_id"]) for x in first["layers"]])
    blobs = sorted(p.name for p in (second_record.parent / "oci" / "blobs" / "sha256").iterdir())
    assert blobs == sorted(p.name for p in (aside / "oci" / "blobs" / "sha256").iterdir())
    for name in ("index.json", "oci-layout"):
        assert (second_record.parent / "oci" / name).read_bytes() == (aside / "oci" / name).read_bytes()
