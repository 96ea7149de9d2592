"""Counter backends: selection, parsing of perf stat and cachegrind output, per-unit differencing."""

from pathlib import Path

import pytest

from perf import counters
from perf.errors import ResultsError, SpecError

PERF_STAT_UNSUPPORTED = """\
<not supported>,,instructions,0,100.00,,
<not supported>,,cycles,0,100.00,,
0.92,msec,task-clock,922040,100.00,261.497,CPUs utilized
"""

PERF_STAT_OK = """\
# started on Sat Nov 28 17:00:00 2026

1234567,,instructions:u,5000000,100.00,1.50,insn per cycle
823045,,cycles:u,5000000,100.00,,
200100,,branches:u,5000000,100.00,,
5002,,branch-misses:u,5000000,100.00,2.50,of all branches
<not counted>,,iTLB-load-misses:u,0,0.00,,
"""

CACHEGRIND_OUT = """\
desc: I1 cache:         32768 B, 64 B, 8-way associative
desc: D1 cache:         32768 B, 64 B, 8-way associative
desc: LL cache:         8388608 B, 64 B, 16-way associative
cmd: /usr/bin/python3.11 -m perf.benchmarks.count --target pure-python --units 50
events: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw Bc Bcm Bi Bim
fl=???
fn=0x0000000000001100
0 5 1 1
summary: 31675623 256892 12089 8333070 508124 17489 3778855 48068 24486 5882025 411811 290099 78735
"""


def test_parse_perf_stat_unsupported_and_counted():
    bad = counters.parse_perf_stat_csv(PERF_STAT_UNSUPPORTED)
    assert bad["instructions"] is None and bad["task-clock"] == pytest.approx(0.92)
    ok = counters.parse_perf_stat_csv(PERF_STAT_OK)
    assert ok["instructions"] == 1234567 and ok["cycles"] == 823045
    assert ok["iTLB-load-misses"] is None


def test_ipc_is_measured_with_perf_stat():
    d = counters.derived("perf-stat", counters.parse_perf_stat_csv(PERF_STAT_OK))
    assert d["ipc"] == pytest.approx(1234567 / 823045)
    assert "ipc_estimate" not in d


def test_parse_cachegrind_and_estimate_ipc():
    raw = counters.parse_cachegrind_out(CACHEGRIND_OUT)
    assert raw["Ir"] == 31675623 and raw["Bim"] == 78735
    norm = counters.normalise_cachegrind(raw)
    assert norm["instructions"] == 31675623
    assert norm["branches"] == 5882025 + 290099
    assert norm["branch-misses"] == 411811 + 78735
    assert norm["L1-icache-load-misses"] == 256892
    d = counters.derived("cachegrind", norm)
    assert "ipc" not in d
    assert 0 < d["ipc_estimate"] < 1


def test_cachegrind_without_summary_is_an_error():
    with pytest.raises(ResultsError, match="summary"):
        counters.parse_cachegrind_out("events: Ir\n")
    with pytest.raises(ResultsError, match="2 events but 1"):
        counters.parse_cachegrind_out("events: Ir I1mr\nsummary: 5\n")


def test_backend_selection(monkeypatch):
    monkeypatch.setattr(counters.runner, "which", lambda name: f"/usr/bin/{name}")
    assert counters.select_backend("auto", probe=lambda: (True, "counts")).name == "perf-stat"
    fallback = counters.select_backend("auto", probe=lambda: (False, "no hardware counters"))
    assert fallback.name == "cachegrind" and "no hardware counters" in fallback.reason
    with pytest.raises(SpecError, match="--backend perf-stat: no hardware counters"):
        counters.select_backend("perf-stat", probe=lambda: (False, "no hardware counters"))
    with pytest.raises(SpecError, match="--backend"):
        counters.select_backend("papi")
    monkeypatch.setattr(counters.runner, "which", lambda name: None)
    with pytest.raises(SpecError, match="valgrind"):
        counters.select_backend("auto", probe=lambda: (False, "no perf"))


def test_perf_stat_probe_without_perf_falls_back_without_running_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no `perf` on PATH
    ran = []
    assert counters.perf_stat_supported(run=lambda *a, **k: ran.append(a)) == (False, "`perf` is not installed")
    assert not ran
    with pytest.raises(SpecError, match="no counter backend: `perf` is not installed.*`valgrind` is not installed"):
        counters.select_backend("auto")


@pytest.mark.parametrize(("stderr", "ok", "why"), [
    (PERF_STAT_UNSUPPORTED, False, "says <not supported>"),
    (PERF_STAT_OK, True, "counts on this machine"),
])
def test_perf_stat_probe_reads_what_perf_stat_says(monkeypatch, stderr, ok, why):
    monkeypatch.setattr(counters.runner, "which", lambda name: f"/usr/bin/{name}")
    ran = []

    class Proc:
        pass

    def run(cmd, **kwargs):
        ran.append(cmd)
        proc = Proc()
        proc.stderr = stderr
        return proc

    got_ok, got_why = counters.perf_stat_supported(run=run)
    assert got_ok is ok and why in got_why
    assert ran == [["perf", "stat", "-x,", "-e", "instructions", "--", "true"]]


def test_perf_stat_probe_on_this_machine():
    """The real probe, unfaked: where perf is absent the fallback reason; where present, a verdict of perf stat."""
    ok, why = counters.perf_stat_supported()
    if counters.runner.which("perf") is None:
        assert (ok, why) == (False, "`perf` is not installed")
    else:
        assert why != "`perf` is not installed"
        assert ok == (why == "`perf stat -e instructions` counts on this machine")
        assert ok or "<not supported>" in why or why.startswith("`perf stat` failed")


def test_per_unit_differencing():
    small = {"instructions": 1000.0, "cycles": None}
    large = {"instructions": 6000.0, "cycles": None}
    assert counters.per_unit(small, large, (10, 60)) == {"instructions": 100.0, "cycles": None}
    with pytest.raises(SpecError):
        counters.per_unit(small, large, (60, 10))


def test_commands_name_the_backend_tools(tmp_path):
    out = tmp_path / "o"
    cg = counters.command(counters.Backend("cachegrind", ""), ["py", "-c", "1"], out)
    assert cg[0] == "valgrind" and "--branch-sim=yes" in cg and cg[-3:] == ["py", "-c", "1"]
    ps = counters.command(counters.Backend("perf-stat", ""), ["py"], out)
    assert ps[:3] == ["perf", "stat", "-x,"] and "instructions,cycles" in ps[ps.index("-e") + 1]


def test_interrupted_counter_runs_are_read_back_only_when_made_by_the_same_command(tmp_path, monkeypatch):
    ran = []

    def fake_run(cmd, **kwargs):
        out = next(c.split("=", 1)[1] for c in cmd if c.startswith("--cachegrind-out-file="))
        units = int(cmd[cmd.index("--units") + 1])
        # More units, more instructions: 100 per unit on top of a start-up of 1000.
        summary = next(line for line in CACHEGRIND_OUT.splitlines() if line.startswith("summary:"))
        fields = summary.split()[1:]
        fields[0] = str(1000 + 100 * units)
        Path(out).write_text(CACHEGRIND_OUT.replace(summary, "summary: " + " ".join(fields)))
        ran.append(units)

    monkeypatch.setattr(counters.runner, "capture", fake_run)
    cg = counters.Backend("cachegrind", "")

    def measure(key, env=None):
        ran.clear()
        m = counters.measure(cg, tmp_path / "py", "pure-dispatch", (2, 7), tmp_path / "w", env=env, reuse_key=key)
        return m["per_unit"]["instructions"], list(ran)

    assert measure("k1") == (100, [2, 7])
    assert measure("k1") == (100, [])  # both outputs kept: same command, environment and key
    assert measure("k2") == (100, [2, 7])  # another executable or installed code: counted again
    assert measure("k2", env={"LD_PRELOAD": "x.so"}) == (100, [2, 7])  # another environment
    assert measure(None) == (100, [2, 7])  # no key (--redo, --no-venv): never reused
    # A run cut short leaves an output without its summary: that unit count runs again, the other is kept.
    measure("k3")
    (tmp_path / "w" / "pure-dispatch-7.cachegrind.out").write_text("desc: I1 cache\n")
    assert measure("k3") == (100, [7])


# What valgrind 3.19 printed here counting a -march=native build (this AMD EPYC has AVX-512).
VEX_AVX512 = """    --23740-- warning: L3 cache found, using its data for the LL simulation.
    vex amd64->IR: unhandled instruction bytes: 0x62 0xF1 0x7C 0x48 0x11 0x84 0x24 0xA8 0x0 0x0
    vex amd64->IR:   REX=0 REX.W=0 REX.R=0 REX.X=0 REX.B=0
    ==23740== Process terminating with default action of signal 4 (SIGILL)"""


def test_an_instruction_valgrind_cannot_decode_is_named_with_the_fix(tmp_path, monkeypatch):
    from hostpgo.errors import CommandError
    from perf.errors import UncountableError

    why = counters.uncountable_reason(Path("/i/native/bin/python3"), VEX_AVX512)
    assert why.startswith(f"/i/native/bin/python3: {counters.UNCOUNTABLE} (bytes 0x62 0xF1")
    assert "AVX-512" in why and "--backend perf-stat" in why and "x86-64-v3" in why
    assert "AVX-512" not in counters.uncountable_reason(Path("p"), VEX_AVX512.replace("0x62 0xF1", "0x0F 0x0B"))
    assert counters.uncountable_reason(Path("p"), "==1== Process terminating with signal 11 (SIGSEGV)") is None

    def sigill(cmd, **kwargs):
        raise CommandError("exit -4", argv=cmd, returncode=-4, log_tail=VEX_AVX512)

    monkeypatch.setattr(counters.runner, "capture", sigill)
    with pytest.raises(UncountableError, match="AVX-512"):
        counters.measure(counters.Backend("cachegrind", ""), tmp_path / "py", "pure-python", (2, 7), tmp_path / "w")
    with pytest.raises(CommandError):  # perf stat's failure is not valgrind's
        counters.measure(counters.Backend("perf-stat", ""), tmp_path / "py", "pure-python", (2, 7), tmp_path / "w")
