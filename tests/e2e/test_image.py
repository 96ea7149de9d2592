"""End to end (slow, `nox -s e2e`): the OCI image of the generic-pgo-lto build, verified by chroot.

It builds generic-pgo-lto first when it is not installed yet (stamps make that a no-op after
test_cpython_pipeline.py). Needs root and mmdebstrap/umoci (`python -m buildsys toolchain --install`).
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


def test_image_of_a_static_build_runs_its_golden_workloads_through_the_entrypoint(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not (shutil.which("mmdebstrap") and shutil.which("umoci")):
        pytest.fail("the image needs root, mmdebstrap and umoci: run `python -m buildsys toolchain --install` "
                    "as root first")
    env = {**os.environ, "HOSTPGO_HOME": str(WORK)}
    prefix = WORK / "install" / "cpython-3.11.2-generic-pgo-lto"
    if not (prefix / "hostpgo-manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "buildsys", "build", "cpython", "--profile", "generic-pgo-lto"],
                       cwd=REPO_ROOT, env=env, timeout=4 * 3600, check=True)
    archive = tmp_path / "image.tar"
    done = subprocess.run([sys.executable, "-m", "buildsys", "image", "--build", "generic-pgo-lto",
                           "--archive", str(archive)], cwd=REPO_ROOT, env=env, timeout=3 * 3600,
                          capture_output=True, text=True)
    print(done.stdout[-3000:], done.stderr[-3000:])
    assert done.returncode == 0, f"image build failed; logs in {WORK / 'logs'}"
    record_line = next(ln for ln in done.stdout.splitlines() if ln.startswith("image "))
    record = Path(record_line.rsplit("record ", 1)[1])
    doc = json.loads(record.read_text())
    assert [w["name"] for w in doc["verify"]] and all(w["golden_match"] for w in doc["verify"])
    assert doc["entrypoint"][2:5] == ["runtime.hostenv", "exec", "default"]
    assert "libssl3" in doc["debian"]["packages"] and doc["python_packages"]["mindspore"] == "2.10.0"
    # The docker-archive holds the same image: skopeo reads it back.
    inspect = subprocess.run(["skopeo", "inspect", f"docker-archive:{archive}"], capture_output=True, text=True,
                             check=True)
    assert json.loads(inspect.stdout)["Labels"]["io.hostpgo.profile"] == "generic-pgo-lto"
