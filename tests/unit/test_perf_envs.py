"""The shared wheelhouse: the project's wheel is rebuilt each command and must not change when the sources do not."""

import hashlib
import json
import sys
from pathlib import Path

from perf import envs


def test_rebuilt_project_wheel_is_byte_identical_so_venvs_and_counts_are_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path))
    house = tmp_path / "perf" / "wheelhouse" / "t"
    house.mkdir(parents=True)
    # Dependencies are already in this wheelhouse (their stamp matches), so only the project's wheel is built.
    pyproject = (envs.project_root() / "pyproject.toml").read_bytes()
    (house / ".deps.json").write_text(json.dumps({"extras": [], "pyproject": hashlib.sha256(pyproject).hexdigest()}))
    digests = []
    for _ in range(2):
        assert envs.build_wheelhouse(Path(sys.executable), "t", (), tmp_path / "log") == house
        assert [w.name for w in house.glob("hostpgo-*.whl")] == ["hostpgo-0.1.0-py3-none-any.whl"]
        digests.append(envs._digest_dir(house))
    assert digests[0] == digests[1]
