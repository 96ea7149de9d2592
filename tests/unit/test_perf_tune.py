"""tune-host: search space, planning within a budget, verdicts, combination, result files; host-settings subjects."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from perf import report, tune
from perf.errors import SpecError
from perf.interpreters import parse_spec, resolve
from perf.tune import Candidate, Choice, Costs, Lever

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "perf" / "fixtures" / "run-small"


def levers():
    return (
        Lever("allocator", (Choice("glibc", ()), Choice("je", ("allocator.name=jemalloc",)),
                            Choice("mi", ("allocator.name=mimalloc",)), Choice("tc", ("allocator.name=tcmalloc",))),
              counts=True),
        Lever("launch", (Choice("blocking", ()), Choice("pipelined", ("mindspore.launch=pipelined",)))),
        Lever("gc", (Choice("default", ()), Choice("freeze", ("gc.freeze_after_warmup=true",))), counts=True),
    )


def test_default_space_loads_and_every_choice_resolves():
    import hostenv

    space = tune.load_space(tune.default_space_file())
    assert [lv.name for lv in space] == ["allocator", "launch", "threads", "affinity", "gc"]
    for lv in space:
        assert lv.choices[0].sets == ()
        for c in lv.choices:
            hostenv.resolve(None, c.sets, env={})  # every override is a valid key and value
    assert {lv.name for lv in space if lv.counts} == {"allocator", "gc"}


@pytest.mark.parametrize("text, match", [
    ("[[lever]]\nname = 'x'\nchoices = [{label = 'a', set = ['gc.enabled=false']}]\n", "first choice is the default"),
    ("[[lever]]\nname = 'x'\nweight = 1\nchoices = [{label = 'a'}]\n", "unknown key.*weight"),
    ("levers = 1\n", "unknown key.*levers"),
    ("", "no \\[\\[lever\\]\\]"),
])
def test_space_errors_name_the_file(tmp_path, text, match):
    p = tmp_path / "space.toml"
    p.write_text(text)
    with pytest.raises(SpecError, match=match):
        tune.load_space(p)


def test_stage1_varies_one_lever_at_a_time():
    cands = tune.stage1_candidates(levers())
    assert cands[0] == Candidate("defaults", ())
    assert [c.label for c in cands[1:]] == ["allocator=je", "allocator=mi", "allocator=tc", "launch=pipelined",
                                            "gc=freeze"]
    assert all(len(c.sets) == 1 for c in cands[1:])


def costs():
    return Costs({"decode-b1": 10.0, "serve-mixed": 10.0}, rounds=2)


W = ("decode-b1", "serve-mixed")


def test_cost_model():
    c = costs()
    assert c.golden(W) == 20
    assert c.latency(3, W) == 2 * 10 * (3 * 2 + 1)


def test_plan_keeps_everything_when_the_budget_allows():
    plan = tune.plan_search(levers(), costs(), 10_000, W)
    assert len(plan.stage1) == 6 and plan.dropped == () and plan.estimate_s <= 10_000
    assert plan.strategy == tune.STRATEGY and plan.notes == ()


def test_plan_drops_low_priority_choices_from_the_longest_lever_first():
    full = tune.plan_search(levers(), costs(), 10_000, W).estimate_s
    plan = tune.plan_search(levers(), costs(), full - 1, W)
    assert [c.label for c in plan.dropped] == ["allocator=tc"]
    assert plan.estimate_s <= full - 1 and "dropped 1" in plan.notes[0]
    # time already spent counts against the budget
    again = tune.plan_search(levers(), costs(), full, W, spent_s=1)
    assert [c.label for c in again.dropped] == ["allocator=tc"]
    # a tiny budget keeps only the defaults and says it is still over
    tiny = tune.plan_search(levers(), costs(), 1, W)
    assert [c.label for c in tiny.stage1] == ["defaults"] and "over" in tiny.notes[-1]


def test_plan_ties_cost_the_later_lever_and_every_lever_keeps_one_choice_longest():
    lv = levers()
    both = (Lever("a", (Choice("d", ()), Choice("a1", ("gc.enabled=false",)), Choice("a2", ("gc.enabled=false",)))),
            Lever("b", (Choice("d", ()), Choice("b1", ("gc.enabled=false",)), Choice("b2", ("gc.enabled=false",)))))
    full = tune.plan_search(both, costs(), 10_000, W).estimate_s
    plan = tune.plan_search(both, costs(), full - 1, W)
    assert [c.label for c in plan.dropped] == ["b=b2"]
    # squeezed: each lever keeps its first alternative before any lever loses its last one
    squeezed = tune.plan_search(lv, costs(), tune.plan_search(lv, costs(), 10_000, W).estimate_s * 0.8, W)
    kept = {c.lever for c in squeezed.stage1[1:]}
    assert kept == {"allocator", "launch", "gc"} and [c.label for c in squeezed.stage1[1:]][0] == "allocator=je"


def test_plan_is_pure():
    assert tune.plan_search(levers(), costs(), 700, W) == tune.plan_search(levers(), costs(), 700, W)


def rows(*pairs):
    return [{"name": n, "ratio": r, "significant": s} for n, r, s in pairs]


def test_judge_time_decides_when_significant():
    v = tune.judge("a", rows(("decode-b1", 0.8, True), ("serve-mixed", 0.95, False)))
    assert v.wins and v.metric == "time" and v.geomean_ratio == pytest.approx((0.8 * 0.95) ** 0.5)
    v = tune.judge("b", rows(("decode-b1", 0.7, True), ("serve-mixed", 1.2, True)))
    assert not v.wins and "slower on serve-mixed" in v.reason


def test_judge_instructions_decide_when_time_is_not_significant():
    r = rows(("decode-b1", 0.99, False))
    assert tune.judge("a", r).metric == "none" and not tune.judge("a", r).wins
    v = tune.judge("a", r, count_ratio=0.95)
    assert v.wins and v.metric == "instructions"
    v = tune.judge("a", r, count_ratio=0.995)
    assert not v.wins and v.metric == "instructions" and "(within 1%)" in v.reason
    v = tune.judge("a", r, count_ratio=1.016)
    assert not v.wins and "1.016x (more work than the defaults)" in v.reason


def test_combine_winners_in_lever_order():
    w = {"gc": Candidate("gc=freeze", ("gc.freeze_after_warmup=true",), "gc", "freeze")}
    assert tune.combine(levers(), w) is None
    w["allocator"] = Candidate("allocator=je", ("allocator.name=jemalloc",), "allocator", "je")
    c = tune.combine(levers(), w)
    assert c.label == "combined:allocator=je+gc=freeze"
    assert c.sets == ("allocator.name=jemalloc", "gc.freeze_after_warmup=true")


def test_results_are_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path))
    d = tune.new_tune_dir("t1")
    d.mkdir(parents=True)
    (d / "tune.json").write_text("{}")
    with pytest.raises(SpecError, match="never overwrites"):
        tune.new_tune_dir("t1")
    p = tmp_path / "best.toml"
    assert tune.unique_path(p) == p
    p.write_text("")
    assert tune.unique_path(p) == tmp_path / "best-2.toml"


def test_render_lists_every_candidate_and_the_choice():
    record = {
        "run": "t", "strategy": tune.STRATEGY, "interpreter": {"python": "/usr/bin/python3.11"},
        "workloads": ["decode-b1"], "budget_s": 600, "spent_s": 300, "command": ["python", "-m", "perf"],
        "plan": {"estimate_s": 500, "stage2_reserve_s": 100, "dropped": ["allocator=tc"]},
        "candidates": {
            "defaults": {"golden": {"ok": True}},
            "allocator=je": {"golden": {"ok": True},
                             "verdict": {"per_workload": {"decode-b1": {"ratio": 0.8, "significant": True}},
                                         "geomean_ratio": 0.8, "wins": True, "metric": "time", "reason": "faster"}},
            "threads=x": {"golden": {"ok": False, "error": "dispatch_threads_num failed"}},
        },
        "best": {"label": "allocator=je", "summary": "allocator.name=jemalloc", "geomean_ratio": 0.8,
                 "decided_by": "time", "file": "/r/best-host.toml", "copy": "/h/best.toml"},
    }
    text = tune.render(record)
    assert "one lever at a time" in text and "dropped to fit: allocator=tc" in text
    assert "| `allocator=je` | ok | 0.800 | 0.800 | time | **wins**: faster |" in text
    assert "FAILED: dispatch_threads_num failed" in text and "**Kept:** `allocator=je`" in text


# ----------------------------------------------------------------------- subjects with host settings


def test_interp_spec_with_host_settings():
    s = parse_spec("je=/usr/bin/python3.11@jemalloc")
    assert (s.name, s.target, s.host) == ("je", "/usr/bin/python3.11", "jemalloc")
    s = parse_spec("/usr/bin/python3.11@profiles/host/gc-freeze.toml")
    assert (s.name, s.target, s.host) == (None, "/usr/bin/python3.11", "profiles/host/gc-freeze.toml")
    assert parse_spec("baseline").host is None
    with pytest.raises(SpecError, match="after '@' are empty"):
        parse_spec("x=/usr/bin/python3@")


def test_resolve_subject_records_settings_and_environment():
    i = resolve(parse_spec(f"{sys.executable}@gc-freeze"))
    assert i.name.endswith("_gc-freeze") and i.host_name == "gc-freeze"
    env = dict(i.host_env)
    assert json.loads(env["HOSTPGO_HOST_SETTINGS"])["gc"]["freeze_after_warmup"] is True
    assert type(i).from_json(json.loads(json.dumps(i.to_json()))) == i
    with pytest.raises(SpecError, match="no host settings named 'nope'"):
        resolve(parse_spec(f"x={sys.executable}@nope"))


# ----------------------------------------------------------------------------------- report


@pytest.fixture
def run_dir(tmp_path):
    dest = tmp_path / "run-small"
    shutil.copytree(FIXTURE, dest)
    return dest


def test_report_shows_host_settings_and_the_attribution_shift(run_dir):
    import hostenv

    rec = json.loads((run_dir / "run.json").read_text())
    rec["interpreters"][1]["host_settings"] = hostenv.resolve("jemalloc", env={}).to_json()
    (run_dir / "run.json").write_text(json.dumps(rec))
    text = report.build(run_dir).read_text()
    assert "| host settings |" in text and "`jemalloc`: allocator.name=jemalloc" in text
    assert "Attribution shift" in text and "**total (median)**" in text
    comp = json.loads((run_dir / report.COMPARISON).read_text())
    shift = comp["attribution_shift"]
    target = next(iter(shift))
    base_total = sum(shift[target]["base"].values())
    lat = next(r for r in comp["latency"][0]["rows"] if r["name"] == target)
    assert base_total == pytest.approx(
        lat["base_median"] * sum(rec["attribution"]["base"][target]["groups"].values()) / 100)


def test_preloaded_allocators_have_their_own_attribution_group():
    from perf.attribute import group_of

    for lib in ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "libmimalloc.so.2.0", "libtcmalloc_minimal.so.4.5.10"):
        assert group_of(lib) == "allocator"
    assert group_of("/lib/x86_64-linux-gnu/libc.so.6") == "libc"


PROVIDER = '''
import os, pathlib, sys
sys.path.insert(0, {fake!r})
from fake_workloads import open_workload as _open

def open_workload(name, checkpoint=None, seed=0):
    settings = os.environ.get("HOSTPGO_HOST_SETTINGS", "none")
    pathlib.Path({seen!r}, settings + "-" + str(os.getpid())).write_text(os.environ.get("LD_PRELOAD", ""))
    return _open(name, checkpoint, seed)
'''


def test_each_subject_runs_under_its_own_environment(tmp_path):
    """Two subjects of one interpreter: each pyperf process (and worker) sees its own host environment."""
    import pyperf

    from perf import latency

    seen = tmp_path / "seen"
    seen.mkdir()
    (tmp_path / "envprobe.py").write_text(PROVIDER.format(fake=str(REPO / "tests" / "perf"), seen=str(seen)))
    subjects = [latency.Subject("plain", Path(sys.executable), {}, {"HOSTPGO_HOST_SETTINGS": "a"}),
                latency.Subject("other", Path(sys.executable), {}, {"HOSTPGO_HOST_SETTINGS": "b"})]
    tiny = latency.LatencySettings(rounds=2, values=2, warmups=1, min_time=0.005, timeout=120)
    rec = latency.run_interleaved(subjects, [tune.TARGETS["decode-b1"]], tmp_path / "lat", tiny,
                                  provider="envprobe", env={"PYTHONPATH": str(tmp_path)})
    names = {p.name.split("-")[0] for p in seen.iterdir()}
    assert names == {"a", "b"}
    suite = pyperf.BenchmarkSuite.load(str(tmp_path / rec["files"]["other"]))
    assert suite.get_benchmark("decode-b1").get_nvalue() == 4


def test_run_orchestrates_golden_stage1_stage2_and_keeps_the_best(tmp_path, monkeypatch):
    """The executor with golden runs and measurements faked: what is dropped, combined, written and printed."""
    import hostenv
    from perf.interpreters import Interpreter

    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path / "home"))
    space = tmp_path / "space.toml"
    space.write_text(
        "[[lever]]\nname = 'allocator'\ncounts = true\nchoices = [{label = 'glibc', set = []}, "
        "{label = 'je', set = ['allocator.name=jemalloc']}, {label = 'mi', set = ['allocator.name=mimalloc']}]\n"
        "[[lever]]\nname = 'gc'\nchoices = [{label = 'default', set = []}, "
        "{label = 'freeze', set = ['gc.freeze_after_warmup=true']}]\n"
        "[[lever]]\nname = 'launch'\nchoices = [{label = 'blocking', set = []}, "
        "{label = 'pipelined', set = ['mindspore.launch=pipelined']}]\n")
    ratios = {"allocator=je": 0.8, "allocator=mi": 0.9, "gc=freeze": 0.97, "launch=pipelined": 1.5,
              "combined:allocator=je+gc=freeze": 0.75}

    def golden(self, cand, workloads):
        if cand.label == "allocator=mi":
            return {"ok": False, "error": "allocator 'mimalloc': install libmimalloc2.0", "workloads": {}}
        return {"ok": True, "workloads": {w: {"seconds": 1.0, "golden_match": True} for w in workloads}}

    def measure(self, cands, targets, name, settings):
        return {"latency": {}, "comparisons": {c.label: [{"name": t.name, "ratio": ratios[c.label],
                                                          "significant": True} for t in targets]
                                               for c in cands[1:]}}

    monkeypatch.setattr(tune._Run, "golden", golden)
    monkeypatch.setattr(tune._Run, "measure", measure)
    interp = Interpreter(name="py", python=sys.executable, version="3.11", implementation="cpython",
                         cache_tag="cpython-311", exe_sha256="0" * 64)
    said = []
    dest = tune.run(interp, budget_s=10_000, workloads=("decode-b1",), space=space, out="t",
                    use_venv=False, say=said.append)
    text = dest.read_text()
    assert dest.name == "best-host.toml" and text.startswith("# hostpgo tune-host t:")
    best = hostenv.resolve(dest, env={})
    assert best.allocator.name == "jemalloc" and best.gc.freeze_after_warmup and best.mindspore.launch == "blocking"
    assert "1.333x faster" in text and "decided by time" in text
    record = json.loads((dest.parent / "tune.json").read_text())
    assert record["winners"] == {"allocator": "allocator=je", "gc": "gc=freeze"}
    assert record["candidates"]["allocator=mi"]["golden"]["ok"] is False
    assert record["best"]["label"] == "combined:allocator=je+gc=freeze"
    copy = Path(record["best"]["copy"])
    assert copy.read_text() == text and copy.parent == tmp_path / "home" / "host"
    md = (dest.parent / "tune.md").read_text()
    assert "install libmimalloc2.0" in md and "**Kept:** `combined:allocator=je+gc=freeze`" in md
    assert any(line.startswith("strategy: one lever at a time") for line in said)
    with pytest.raises(SpecError, match="never overwrites"):
        tune.run(interp, budget_s=10_000, workloads=("decode-b1",), space=space, out="t", use_venv=False,
                 say=said.append)


# ------------------------------------------------------------------- host-settings errors: named, and clean exits


def _space(tmp_path, item):
    p = tmp_path / "space.toml"
    p.write_text("[[lever]]\nname = 'allocator'\nchoices = [{label = 'glibc', set = []}, "
                 f"{{label = 'odd', set = [{item!r}]}}]\n")
    return p


@pytest.mark.parametrize("item, says", [
    ("allocator.name=hoard", "key 'allocator.name' has value 'hoard'; allowed values: 'glibc', 'jemalloc'"),
    ("gc.bogus=1", "unknown key 'gc.bogus'; allowed keys in [gc]"),
    ("threads=2", "'threads=2' must look like section.key=value"),
])
def test_space_set_items_are_host_settings_assignments_named_by_file_lever_and_choice(tmp_path, item, says):
    import hostenv

    p = _space(tmp_path, item)
    with pytest.raises(hostenv.HostSettingsError) as exc:
        tune.load_space(p)
    assert str(exc.value).startswith(f"{p} lever 'allocator' choice 'odd': ") and says in str(exc.value)


def test_space_set_item_must_be_a_string(tmp_path):
    p = tmp_path / "space.toml"
    p.write_text("[[lever]]\nname = 'gc'\nchoices = [{label = 'd', set = []}, {label = 'x', set = [1]}]\n")
    with pytest.raises(SpecError, match=r"lever 'gc' choice 'x': set item 1 is not"):
        tune.load_space(p)


def _perf_main(monkeypatch, argv):
    import io

    from rich.console import Console

    from perf import __main__ as perf_main

    out = io.StringIO()
    monkeypatch.setattr(perf_main, "console", Console(file=out, width=400))
    return perf_main.main(argv), out.getvalue()


def test_a_bad_space_item_exits_2_with_the_message(tmp_path, monkeypatch):
    p = _space(tmp_path, "mindspore.launch=async")
    rc, out = _perf_main(monkeypatch, ["tune-host", "--interp", "x", "--budget", "100", "--space", str(p),
                                       "--dry-run"])
    assert rc == 2 and "lever 'allocator' choice 'odd': key 'mindspore.launch' has value 'async'" in out
    assert "Traceback" not in out


def test_a_settings_error_after_the_search_exits_2_not_a_traceback(tmp_path, monkeypatch):
    """tune.run resolves the kept candidate on top of the subject's settings outside any try: a settings file that
    went bad during the search is a clean exit 2 naming the file."""
    from perf import interpreters
    from perf.interpreters import Interpreter

    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path / "home"))
    base = tmp_path / "base.toml"
    base.write_text("[gc]\nenabled = 'sometimes'\n")
    interp = Interpreter(name="py", python=sys.executable, version="3.11", implementation="cpython",
                         cache_tag="cpython-311", exe_sha256="0" * 64, host_settings={"source": str(base)})
    monkeypatch.setattr(interpreters, "parse_spec", lambda text: text)
    monkeypatch.setattr(interpreters, "resolve", lambda spec: interp)
    monkeypatch.setattr(tune._Run, "golden", lambda self, cand, workloads: {
        "ok": True, "workloads": {w: {"seconds": 1.0, "golden_match": True} for w in workloads}})
    monkeypatch.setattr(tune._Run, "measure", lambda self, cands, targets, name, settings: {
        "latency": {}, "comparisons": {c.label: [{"name": t.name, "ratio": 1.0, "significant": False}
                                                 for t in targets] for c in cands[1:]}})
    space = _space(tmp_path, "allocator.name=jemalloc")
    rc, out = _perf_main(monkeypatch, ["tune-host", "--interp", "x", "--budget", "10000", "--workloads", "decode-b1",
                                       "--space", str(space), "--out", "t", "--no-venv"])
    assert rc == 2 and f"{base.resolve()}: key 'gc.enabled' has value 'sometimes'" in out.replace("\n", "")
    assert "Traceback" not in out


def test_report_with_bad_host_settings_exits_2_not_a_traceback(run_dir, monkeypatch):
    rec = json.loads((run_dir / "run.json").read_text())
    rec["interpreters"][1]["host_settings"] = {"name": "odd", "gc": {"thresholds": [1]}}
    (run_dir / "run.json").write_text(json.dumps(rec))
    rc, out = _perf_main(monkeypatch, ["report", str(run_dir)])
    assert rc == 2 and "key 'gc.thresholds' has value [1]" in out.replace("\n", "")
    assert "Traceback" not in out
