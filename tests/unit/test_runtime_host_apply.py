"""runtime.host_apply: the MindSpore and GC half applied in-process, from one object per process."""

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

import hostenv
from hostenv import allocators
from hostenv.errors import HostSettingsError
from runtime.host_apply import HostApplication

REPO = Path(__file__).resolve().parents[2]


class FakeRuntime:
    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail

    def __getattr__(self, name):
        def call(*args):
            if name == self.fail:
                raise RuntimeError(f"{name} is not supported on CPU")
            self.calls.append((name, args))
        return call


class FakeMs:
    def __init__(self, fail=None):
        self.runtime = FakeRuntime(fail)
        tuning = type("NS", (), {})()
        tuning.op_tuning = self.runtime
        self.device_context = type("NS", (), {"cpu": tuning})()


def test_apply_mindspore_calls_the_apis_in_order():
    ms = FakeMs()
    app = HostApplication(hostenv.resolve("threads-1", env={}))
    done = app.apply_mindspore(ms)
    assert ms.runtime.calls == [("dispatch_threads_num", (1,)), ("threads_num", (1,)), ("launch_blocking", ())]
    assert [d["status"] for d in done] == ["applied"] * 3 and app.applied == done
    ms = FakeMs()
    app = HostApplication(hostenv.resolve("pipelined", env={}))
    done = app.apply_mindspore(ms)
    assert ms.runtime.calls == [] and done[-1]["status"] == "not called (launch = pipelined)"


def test_a_failing_mindspore_api_is_reported_not_skipped():
    app = HostApplication(hostenv.resolve("threads-1", env={}))
    with pytest.raises(HostSettingsError, match=r"dispatch_threads_num\(1\) failed on this device: RuntimeError"):
        app.apply_mindspore(FakeMs(fail="dispatch_threads_num"))


def test_affinity_without_the_cpuset_file_is_an_error(tmp_path):
    s = hostenv.resolve(None, ["mindspore.affinity=true"], env={})
    with pytest.raises(HostSettingsError, match="cpuset.cpus is missing here"):
        HostApplication(s, cpuset=tmp_path / "cpuset.cpus").apply_mindspore(FakeMs())
    (tmp_path / "cpuset.cpus").write_text("0-1\n")
    ms = FakeMs()
    HostApplication(s, cpuset=tmp_path / "cpuset.cpus").apply_mindspore(ms)
    assert ms.runtime.calls[0] == ("set_cpu_affinity", (True, None, None))


def test_two_applications_keep_their_own_state():
    a = HostApplication(hostenv.resolve("threads-1", env={}))
    b = HostApplication(hostenv.resolve("pipelined", env={}))
    a.apply_mindspore(FakeMs())
    assert len(a.applied) == 3 and b.applied == [] and b.warmup == {}


def test_gc_policy_applied_recorded_and_restored():
    old = gc.get_threshold()
    try:
        s = hostenv.resolve("gc-freeze", ["gc.enabled=false"], env={})
        app = HostApplication(s)
        app.apply_gc()
        assert gc.get_threshold() == (10000, 20, 20) and not gc.isenabled()
        info = app.after_warmup()
        assert info["frozen_objects"] == gc.get_freeze_count() > 0
        rec = app.record()
        assert rec["name"] == "gc-freeze" and [a["api"] for a in rec["applied"]] == \
            ["gc.set_threshold(10000, 20, 20)", "gc.disable()", "gc.collect(); gc.freeze()"]
        assert rec["observed"]["gc_enabled"] is False and rec["observed"]["gc_threshold"] == [10000, 20, 20]
    finally:
        gc.unfreeze()
        gc.enable()
        gc.set_threshold(*old)


def test_no_freeze_when_not_asked():
    app = HostApplication(hostenv.resolve(None, env={}))
    assert app.after_warmup() == {} and app.record()["applied"] == []


def test_from_environment_reads_the_launchers_json(monkeypatch):
    s = hostenv.resolve("gc-freeze", env={})
    monkeypatch.setenv(hostenv.ENV_SETTINGS, json.dumps(s.to_json()))
    assert HostApplication.from_environment().settings == s


@pytest.mark.runtime
def test_workload_under_preloaded_jemalloc_keeps_its_golden_digest():
    pytest.importorskip("mindspore")
    try:
        allocators.find("jemalloc", query_version=False)
    except hostenv.AllocatorNotFound as exc:
        pytest.skip(str(exc))
    p = subprocess.run([sys.executable, "-m", "runtime", "workload", "decode-b1", "--check-golden", "--json",
                        "--host-settings", "jemalloc", "--host-set", "gc.freeze_after_warmup=true"],
                       check=False, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    rec = json.loads(p.stdout)
    hs = rec["host_settings"]
    assert rec["golden_match"] and hs["allocator_in_effect"] is True and hs["name"] == "jemalloc"
    assert any("libjemalloc" in lib for lib in hs["observed"]["allocator_libraries"])
    assert any(a["api"].startswith("gc.collect") for a in hs["applied"])
