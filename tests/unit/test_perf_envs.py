"""The shared wheelhouse: the project's wheel is rebuilt each command and must not change when the sources do not."""

import hashlib
import json
import sys
import sysconfig
from pathlib import Path

from perf import envs


def test_rebuilt_project_wheel_is_byte_identical_so_venvs_and_counts_are_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path))
    house = tmp_path / "perf" / "wheelhouse" / "t"
    house.mkdir(parents=True)
    # Dependencies are already in this wheelhouse (their stamp matches), so only the project's wheel is built.
    pyproject = (envs.project_root() / "pyproject.toml").read_bytes()
    (house / ".deps.json").write_text(json.dumps({"extras": [], "pyproject": hashlib.sha256(pyproject).hexdigest()}))
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    digests = []
    for _ in range(2):
        assert envs.build_wheelhouse(Path(sys.executable), "t", (), tmp_path / "log") == house
        # one wheel for this interpreter's ABI: it carries the compiled runtime._hostpath
        assert [w.name for w in house.glob("hostpgo-*.whl")] == [f"hostpgo-0.1.0-{tag}-{tag}-{platform}.whl"]
        digests.append(envs._digest_dir(house))
    assert digests[0] == digests[1]
