"""`python -m perf`: bad input is refused before any work (exit 2, naming the flag); the perf extra is optional."""

import subprocess
import sys
from pathlib import Path

import pytest

from perf import extra, tune
from perf.__main__ import main
from perf.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]

# Runs `python -m perf ARGS` with the named packages made unimportable, as if the extra were not installed.
WITHOUT = """\
import runpy, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
sys.argv = ["perf", *sys.argv[2:]]
runpy.run_module("perf", run_name="__main__", alter_sys=True)
"""


def _perf_without(packages: str, *args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT, packages, *args], cwd=ROOT, capture_output=True, check=False,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOSTPGO_HOME": str(home)})


def test_help_works_without_the_perf_extra(tmp_path):
    top = _perf_without("pyperf,matplotlib", "--help", home=tmp_path)
    assert top.returncode == 0, top.stderr
    assert "tune-host" in top.stdout and "Traceback" not in top.stderr
    sub = _perf_without("pyperf,matplotlib", "tune-host", "--help", home=tmp_path)
    assert sub.returncode == 0 and "--budget SECONDS" in sub.stdout
    plan = _perf_without("pyperf,matplotlib", "tune-host", "--interp", "x", "--budget", "900", "--dry-run",
                         home=tmp_path)
    assert plan.returncode == 0 and "900s budget" in plan.stdout  # the plan is pure: no pyperf needed


@pytest.mark.parametrize(("missing", "said"), [("pyperf,matplotlib", "pyperf and matplotlib are"),
                                               ("pyperf", "pyperf is"), ("matplotlib", "matplotlib is")])
def test_a_command_that_needs_the_extra_says_how_to_install_it(tmp_path, missing, said):
    proc = _perf_without(missing, "report", "some-run", home=tmp_path)
    assert proc.returncode == 2
    assert f"error: {said} not installed: pip install -e '.[perf]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # checked before anything was made


def test_require_and_lazy_imports_raise_spec_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyperf", None)
    with pytest.raises(SpecError, match=r"^pyperf is not installed: pip install -e '\.\[perf\]'$") as exc:
        extra.require()
    assert exc.value.exit_code == 2
    with pytest.raises(SpecError, match="^pyperf is not installed"):
        extra.pyperf()
    monkeypatch.delitem(sys.modules, "pyperf")
    assert extra.pyperf().__name__ == "pyperf"


def test_a_missing_dependency_of_an_installed_package_is_not_blamed_on_the_extra(monkeypatch):
    def broken(name):
        raise ModuleNotFoundError("No module named 'kiwisolver'", name="kiwisolver")

    monkeypatch.setattr(extra.importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError, match="kiwisolver"):
        extra.pyplot()


@pytest.mark.parametrize(("args", "flag"), [
    (["--budget", "-5"], "--budget"),
    (["--budget", "0"], "--budget"),
    (["--budget", "nan"], "--budget"),
    (["--budget", "60", "--rounds", "0"], "--rounds"),
    (["--budget", "60", "--rounds", "-2"], "--rounds"),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_tune_host_refuses_non_positive_budget_and_rounds(monkeypatch, capsys, args, flag, dry_run):
    def no_work(*a, **k):
        raise AssertionError("tune-host started work")

    monkeypatch.setattr(tune, "run", no_work)
    monkeypatch.setattr(tune, "dry_run", no_work)
    with pytest.raises(SystemExit) as exc:
        main(["tune-host", "--interp", sys.executable, *args, *(["--dry-run"] if dry_run else [])])
    assert exc.value.code == 2
    assert f"argument {flag}: must be above 0" in capsys.readouterr().err


def test_tune_host_dry_run_accepts_a_positive_budget(capsys):
    assert main(["tune-host", "--interp", sys.executable, "--budget", "120.5", "--rounds", "1", "--dry-run"]) == 0
    assert "of a 120s budget" in capsys.readouterr().out


def test_bench_out_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "report.md").write_text("my own notes")
    rc = main(["bench", "--interp", f"a={sys.executable}", "--workloads", "pure-dispatch", "--no-venv", "--quick",
               "--stages", "latency", "--out", str(mine)])
    assert rc == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps lines at the console width
    assert f"--out {mine}: holds files but no run.json" in err and "choose a new or empty directory" in err
    assert [p.name for p in mine.iterdir()] == ["report.md"] and (mine / "report.md").read_text() == "my own notes"


def test_tune_host_dry_run_refuses_the_workloads_the_real_run_refuses(capsys):
    argv = ["tune-host", "--interp", sys.executable, "--budget", "600", "--workloads", "pure-python"]
    assert main([*argv, "--dry-run"]) == 2
    assert "--workloads: pure-python is not a runtime workload with a golden digest" in capsys.readouterr().err


def test_tune_host_refuses_a_ray_workload_it_could_not_count(capsys):
    argv = ["tune-host", "--interp", sys.executable, "--budget", "600", "--workloads", "decode-b1,ray-decode"]
    assert main([*argv, "--dry-run"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--workloads: ray-decode runs its model in Ray actor processes" in err
