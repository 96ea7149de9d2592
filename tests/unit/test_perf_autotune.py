"""perf autotune: the search space, the plan (order, budget), candidate profiles, the search log's resume, best.toml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildsys.core.paths import PROFILES_DIR, WorkArea
from buildsys.toolchain import profile as profmod
from hostpgo.errors import HostpgoError, InputError
from perf import __main__ as cli
from perf import autotune as at
from perf.errors import UncountableError

X86 = at.HostFacts("x86_64", ("clang", "gcc"))
BASE = "workload-pgo-lto"
BASE_BID = at.build_id_of(BASE)
# The recorded stages of a workload-pgo-lto-tcmalloc build on this machine (its hostpgo-manifest.json).
RECORDED_STAGES = {
    "source": 0.0, "runtime-deps": 0.0, "configure-instrumented": 121.0, "build-instrumented": 235.3,
    "install-instrumented": 75.1, "train": 190.3, "merge": 0.4, "configure": 56.8, "build": 559.4,
    "verify": 76.8, "install": 29.2}
# Instructions per unit of the base, from docs/results.md (cachegrind: workload-pgo-lto per pure-python step
# 2,564,047; whole process per decode-b1 step 76.68 M); the candidates' figures are these times a ratio.
BASE_COUNTS = {"pure-python": 2_564_047.0, "decode-b1": 76_680_000.0}

SPACE = """
[search]
base = "workload-pgo-lto"
screen = ["pure-python", "decode-b1"]
threshold = 0.005
finalists = 2
confirm = ["decode-b1"]
starting_points = []

[[dimension]]
name = "lto"
doc = "LTO mode"
choices = [
  { label = "thin", set = ["optimize.lto=thin"] },
  { label = "full", set = ["optimize.lto=full"] },
]

[[dimension]]
name = "arch"
choices = [
  { label = "v3", set = ["optimize.arch=march=x86-64-v3"], requires = ["machine=x86_64"] },
  { label = "native", set = ["optimize.arch=native"], requires = ["machine=x86_64"] },
  { label = "v2", set = ["optimize.arch=march=x86-64-v2"], requires = ["machine=x86_64"] },
  { label = "mcpu", set = ["optimize.arch=mcpu=native"], requires = ["machine=aarch64"] },
]

[[dimension]]
name = "interposition"
requires = ["shared"]
choices = [{ label = "no-si", set = ["optimize.semantic_interposition=false"] }]

[[dimension]]
name = "allocator"
choices = [
  { label = "tcmalloc", set = ["optimize.allocator=tcmalloc"] },
  { label = "mimalloc", set = ["optimize.allocator=mimalloc"] },
]

[[dimension]]
name = "cflags"
choices = [{ label = "no-plt-flag", set = ["flags.cflags+=[\\"-fno-plt\\"]"] }]
"""


def write_space(tmp_path: Path, text: str = SPACE, name: str = "space.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def base_manifest(work: WorkArea, build_id: str = BASE_BID, data: Path | None = None) -> dict:
    """A base install as buildsys leaves it: bin/python3 and a manifest with the recorded stages."""
    prefix = work.install / build_id
    (prefix / "bin").mkdir(parents=True, exist_ok=True)
    (prefix / "bin" / "python3").write_text("")
    data = data or work.profiles / f"{build_id}-30d75ab64a9f.profdata"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_bytes(b"")
    doc = {"build_id": build_id, "stages": {k: {"seconds": v, "skipped": True, "key": "k"}
                                            for k, v in RECORDED_STAGES.items()},
           "profile_data": {"path": str(data), "sha256": "0" * 64, "reused": False}}
    (prefix / "hostpgo-manifest.json").write_text(json.dumps(doc))
    return doc


def always_reusable(profile, path):
    return (profile.toolchain.family == "clang", "same compiler family as the base's data"
            if profile.toolchain.family == "clang" else "another compiler family cannot read clang's data")


# ------------------------------------------------------------------------------------------ the space

def test_real_space_loads_every_dimension_of_the_issue():
    space = at.load_space(at.DEFAULT_SPACE)
    names = [d.name for d in space.dimensions]
    assert names == ["compiler", "lto", "arch", "inline", "bolt", "split", "plt", "align", "allocator",
                     "interposition", "ceval", "dictobject", "obmalloc"]
    keys = {i.dotted for d in space.dimensions for c in d.choices for i in c.items}
    assert {"toolchain.family", "optimize.lto", "optimize.arch", "tuning.inline_threshold", "optimize.bolt",
            "bolt.apply", "tuning.split_machine_functions", "tuning.no_plt", "tuning.align_functions",
            "tuning.align_loops", "optimize.allocator", "optimize.semantic_interposition",
            "tuning.per_file"} <= keys
    per_file = {f for d in space.dimensions for c in d.choices for i in c.items if i.key == "per_file"
                for f in i.value}
    assert per_file == {"Python/ceval.c", "Objects/dictobject.c", "Objects/obmalloc.c"}
    assert space.settings.base == "workload-pgo-lto"
    assert space.settings.starting_points == ("gcc-pgo-lto", "native")
    arch = next(d for d in space.dimensions if d.name == "arch")
    assert [c.requires for c in arch.choices if c.label.startswith("mcpu")] == [("machine=aarch64",)] * 2


def test_priority_reorders_dimensions(tmp_path):
    text = SPACE.replace('name = "allocator"', 'name = "allocator"\npriority = -1')
    space = at.load_space(write_space(tmp_path, text))
    assert [d.name for d in space.dimensions] == ["allocator", "lto", "arch", "interposition", "cflags"]


@pytest.mark.parametrize("edit, needle", [
    (lambda s: s + "\n[extra]\nx = 1\n", "unknown key(s) extra"),
    (lambda s: s.replace('doc = "LTO mode"', 'doc = "LTO mode"\nwhat = 1'), "unknown key(s) what"),
    (lambda s: s.replace("optimize.lto=full", "optimize.lot=full"), "unknown key 'optimize.lot'"),
    (lambda s: s.replace("optimize.lto=full", "optimize.lto=fast"), "allowed values: 'off', 'thin', 'full'"),
    (lambda s: s.replace('requires = ["shared"]', 'requires = ["big"]'), "'requires' must be a list"),
    (lambda s: s.replace('label = "full"', 'label = "thin"'), "choice label 'thin' appears twice"),
    (lambda s: s.replace('threshold = 0.005', 'threshold = 2'), "key 'search.threshold'"),
    (lambda s: s.replace('screen = ["pure-python", "decode-b1"]', 'screen = ["pure-pyton"]'), "search.screen"),
    (lambda s: s.replace('finalists = 2', 'finalists = 0'), "search.finalists"),
    (lambda s: s.replace('finalists = 2', 'finalists = 2\nwinner = "fastest"'), "search.winner"),
    (lambda s: s.replace('"optimize.allocator=tcmalloc"', '"optimize.allocator+=tcmalloc"'), "'+=' appends"),
])
def test_space_errors_name_the_file_and_the_key(tmp_path, edit, needle):
    path = write_space(tmp_path, edit(SPACE))
    with pytest.raises(InputError) as err:
        at.load_space(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_bad_item_names_dimension_and_choice(tmp_path):
    path = write_space(tmp_path, SPACE.replace("optimize.lto=full", "optimize.lot=full"))
    with pytest.raises(InputError, match=r"dimension 'lto' choice 'full'"):
        at.load_space(path)


def test_no_dimensions_is_an_error(tmp_path):
    with pytest.raises(InputError, match=r"no \[\[dimension\]\] tables"):
        at.load_space(write_space(tmp_path, '[search]\nbase = "lto"\n'))


def test_build_side_keys_parse_through_the_profile_loader_and_keep_their_written_value():
    origin = at.Origin("file", "x")
    item = at.parse_item('tuning.per_file={"Python/ceval.c" = ["-fno-gcse"]}', origin)
    assert (item.section, item.key, item.value) == ("tuning", "per_file", {"Python/ceval.c": ["-fno-gcse"]})
    assert at.parse_item("tuning.inline_threshold=500", origin) == at.Item("tuning", "inline_threshold", 500)
    assert at.parse_item("optimize.compiler_cache=ccache", origin).value == "ccache"
    with pytest.raises(InputError, match="unknown key 'tuning.per_fil'"):
        at.parse_item("tuning.per_fil=1", origin)
    with pytest.raises(InputError, match="tuning.inline_threshold"):
        at.parse_item('tuning.inline_threshold="high"', origin)


def test_misspelt_build_side_key_is_refused_naming_the_file_and_the_choice(tmp_path):
    text = SPACE + """
[[dimension]]
name = "inline"
choices = [{ label = "inline-500", set = ["tuning.inline_treshold=500"] }]
"""
    path = write_space(tmp_path, text)
    with pytest.raises(InputError) as err:
        at.load_space(path)
    msg = str(err.value)
    assert f"{path} dimension 'inline' choice 'inline-500'" in msg
    assert "unknown key 'tuning.inline_treshold'" in msg


def test_misspelt_common_item_is_refused_naming_the_file(tmp_path):
    path = write_space(tmp_path, SPACE.replace("starting_points = []",
                                               'starting_points = []\ncommon = ["optimize.compiler_cahe=ccache"]'))
    with pytest.raises(InputError) as err:
        at.load_space(path)
    assert f"{path} [search] common" in str(err.value)
    assert "unknown key 'optimize.compiler_cahe'" in str(err.value)


@pytest.mark.parametrize("text, seconds", [("7200", 7200), ("90m", 5400), ("2h", 7200), ("1h30m", 5400),
                                           ("45s", 45), ("0.5h", 1800)])
def test_budget_forms(text, seconds):
    assert at.parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "2x", "h", "-5", "0", "2 hours"])
def test_bad_budget_names_the_flag(text):
    with pytest.raises(InputError, match="--budget"):
        at.parse_budget(text)


def test_a_full_confirmation_costs_more_in_the_plan_than_a_quick_one(tmp_path):
    work = WorkArea(tmp_path / "home")
    doc = base_manifest(work)
    space = at.load_space(at.DEFAULT_SPACE.parent / "autotune-2h.toml")
    quick, full = (at.plan_search(at.with_options(space, confirm_quick=q), budget_s=1e6, host=X86, work=work,
                                  manifest=doc, check=always_reusable) for q in (True, False))
    assert full.costs.confirm_subject_s > quick.costs.confirm_subject_s
    assert full.estimate_s > quick.estimate_s


def test_every_shipped_space_loads():
    spaces = sorted(at.DEFAULT_SPACE.parent.glob("*.toml"))
    assert at.DEFAULT_SPACE in spaces and len(spaces) >= 2
    for path in spaces:
        assert at.load_space(path).dimensions, path


def test_the_two_hour_space_plans_a_candidate_within_its_budget(tmp_path):
    """docs/autotune.md sells autotune-2h.toml as one `--budget 2h5m` session here: from this machine's
    recorded base stages and measured count and confirmation times its plan keeps both candidates and fits the
    budget; the full space keeps 1 of its 20."""
    work = WorkArea(tmp_path / "home")
    doc = base_manifest(work)
    for name, kept in (("autotune-2h.toml", 2), ("autotune.toml", 1)):
        space = at.load_space(at.DEFAULT_SPACE.parent / name)
        plan = at.plan_search(space, budget_s=7500, host=X86, work=work, manifest=doc, check=always_reusable)
        assert len(plan.singles) == kept, name
        assert plan.estimate_s <= plan.budget_s


# ------------------------------------------------------------------------------------------ the plan

def plan_of(tmp_path, budget_s=1e6, text=SPACE, manifest=True, host=X86, **kw):
    work = WorkArea(tmp_path / "home")
    doc = base_manifest(work) if manifest else None
    space = at.load_space(write_space(tmp_path, text))
    return at.plan_search(space, budget_s=budget_s, host=host, work=work, manifest=doc, check=always_reusable,
                          **kw), space


def test_candidates_one_dimension_at_a_time_in_priority_order(tmp_path):
    plan, _ = plan_of(tmp_path)
    assert [(p.candidate.dimension, p.candidate.label) for p in plan.singles] == [
        ("lto", "full"), ("arch", "v3"), ("arch", "native"), ("arch", "v2"), ("allocator", "tcmalloc"),
        ("allocator", "mimalloc"), ("cflags", "no-plt-flag")]
    left = dict(plan.left_out)
    assert left["lto=thin"].startswith("the base itself")
    assert left["arch=mcpu"] == "requires machine=aarch64: this host is x86_64"
    assert "requires shared" in left["interposition=no-si"]
    assert all(p.reuse for p in plan.singles)
    assert len({p.candidate.id for p in plan.singles}) == len(plan.singles)
    # The estimate uses the base's recorded build time: 56.8 + 559.4 + 76.8 + 29.2 s, no training (reused).
    assert plan.costs.build_s == pytest.approx(722.2)
    assert plan.singles[0].estimate_s == pytest.approx(722.2 + plan.costs.count_s)
    assert "link only" in plan.singles[4].rebuilds


def test_aarch64_host_gets_mcpu_and_not_march(tmp_path):
    plan, _ = plan_of(tmp_path, host=at.HostFacts("aarch64", ("clang",)))
    labels = [p.candidate.label for p in plan.singles if p.candidate.dimension == "arch"]
    assert labels == ["mcpu"]


def test_budget_drops_from_the_end_of_the_longest_dimension(tmp_path):
    full, _ = plan_of(tmp_path)
    one = full.singles[0].estimate_s
    # Room for four of the seven candidates beside the base and the reserve.
    budget = full.estimate_s - 3 * one + 1
    plan, _ = plan_of(tmp_path, budget_s=budget)
    assert [p.candidate.label for p in plan.dropped] == ["v2", "mimalloc", "native"]
    assert [p.candidate.label for p in plan.singles] == ["full", "v3", "tcmalloc", "no-plt-flag"]
    assert plan.estimate_s <= budget
    assert any("dropped 3 candidate(s)" in n for n in plan.notes)


def test_finished_candidates_of_a_resumed_run_cost_nothing_and_stay(tmp_path):
    full, _ = plan_of(tmp_path)
    one = full.singles[0].estimate_s
    budget = full.estimate_s - 3 * one + 1
    v2 = next(p.candidate.id for p in full.singles if p.candidate.label == "v2")
    full_id = full.singles[0].candidate.id
    plan, _ = plan_of(tmp_path, budget_s=budget, remaining={v2: 0.0, full_id: 0.0})
    # v2 and lto-full are screened already: kept and free, so only one of the other five must go (the first
    # plan dropped v2 first; now the longest unfinished lists are arch and allocator, and the later one loses).
    assert [p.candidate.label for p in plan.dropped] == ["mimalloc"]
    assert [p.candidate.label for p in plan.singles] == ["full", "v3", "native", "v2", "tcmalloc", "no-plt-flag"]
    assert plan.estimate_s <= budget


def test_unbuilt_base_is_estimated_and_trains(tmp_path):
    plan, _ = plan_of(tmp_path, manifest=False)
    assert not plan.base_installed and plan.profile_data is None
    assert plan.costs.source.startswith("assumed")
    assert not any(p.reuse for p in plan.singles)
    assert plan.singles[0].estimate_s == pytest.approx(at.ASSUMED_BUILD_S + at.ASSUMED_TRAIN_S + plan.costs.count_s)


def test_gcc_candidate_is_refused_the_clang_data(tmp_path):
    text = SPACE + """
[[dimension]]
name = "compiler"
choices = [{ label = "gcc", set = ["toolchain.family=gcc", "optimize.linker=default"] }]
"""
    plan, _ = plan_of(tmp_path, text=text)
    gcc = next(p for p in plan.singles if p.candidate.dimension == "compiler")
    assert (gcc.reuse, gcc.reuse_why) == (False, "another compiler family cannot read clang's data")
    assert gcc.estimate_s > plan.singles[0].estimate_s
    assert gcc.rebuilds.startswith("everything")


def test_base_profile_data_from_the_manifest_else_the_store(tmp_path):
    work = WorkArea(tmp_path / "home")
    doc = base_manifest(work)
    assert at.base_profile_data(doc, work) == doc["profile_data"]["path"]
    Path(doc["profile_data"]["path"]).unlink()
    assert at.base_profile_data(doc, work) is None
    kept = work.profiles / f"{BASE_BID}-aaaaaaaaaaaa.profdata"
    kept.write_bytes(b"")
    (work.profiles / f"{BASE_BID}-aaaaaaaaaaaa.profdata.json").write_text("{}")
    assert at.base_profile_data(doc, work) == str(kept)
    plan, _ = plan_of(tmp_path / "p")
    assert plan.profile_data.endswith("-30d75ab64a9f.profdata")


def test_the_plan_asks_buildsys_whether_the_base_data_is_reusable(tmp_path):
    """Without a stand-in check the plan calls buildsys.pipeline.pgo.profile_data_reusable itself."""
    text = SPACE + """
[[dimension]]
name = "compiler"
choices = [{ label = "gcc", set = ["toolchain.family=gcc", "optimize.linker=default"] }]
"""
    work = WorkArea(tmp_path / "home")
    doc = base_manifest(work)
    plan = at.plan_search(at.load_space(write_space(tmp_path, text)), budget_s=1e6, host=X86, work=work, manifest=doc)
    data = doc["profile_data"]["path"]
    gcc = next(p for p in plan.singles if p.candidate.dimension == "compiler")
    assert gcc.reuse is False
    assert gcc.reuse_why.startswith(f"{data} is an llvm-profdata file (clang or BiSheng) and profile "
                                    f"'{BASE}' compiles with gcc, which cannot read it")
    full = next(p for p in plan.singles if p.candidate.label == "full")
    assert full.reuse is True
    assert full.reuse_why.startswith(f"{data} (llvm format, made by an unrecorded compiler (no sidecar)")


def test_combination_merges_tables_and_drops_unmet_requirements():
    gcc = at.PlannedCandidate(at.Candidate("a", "compiler", "gcc", (
        at.Item("toolchain", "family", "gcc"), at.Item("optimize", "linker", "default"))), "", "", False, "", 1)
    split = at.PlannedCandidate(at.Candidate("b", "lto", "full", (at.Item("optimize", "lto", "full"),),
                                             ("family=clang",)), "", "", True, "", 1)
    v3 = at.PlannedCandidate(at.Candidate("c", "arch", "v3", (at.Item("optimize", "arch", "march=x86-64-v3"),)),
                             "", "", True, "", 1)
    space = at.Space(Path("s"), at.load_space(at.DEFAULT_SPACE).settings, ())
    combo, notes = at.combine(space, [gcc, split, v3], BASE, X86)
    assert combo.parts == ("a", "c")
    assert [i.dotted for i in combo.items] == ["toolchain.family", "optimize.linker", "optimize.arch"]
    assert notes == ["lto=full left out of the combination: requires family=clang: the candidate's compiler "
                     "family is gcc"]
    items, _ = at.merge_items([
        [at.Item("tuning", "per_file", {"Python/ceval.c": ["-O3"]})],
        [at.Item("tuning", "per_file", {"Objects/obmalloc.c": ["-O2"]})]])
    assert items[0].value == {"Python/ceval.c": ["-O3"], "Objects/obmalloc.c": ["-O2"]}


# ------------------------------------------------------------------------------------------ profiles

def test_candidate_files_resolve_through_buildsys_and_have_their_own_build_ids(tmp_path):
    plan, space = plan_of(tmp_path)
    base = profmod.load(BASE, environ={})
    ids = set()
    for p in plan.singles:
        path = at.write_candidate_file(tmp_path / "candidates" / f"{p.candidate.id}.toml", p.candidate,
                                       base_ref=BASE, common=space.common, base_profile=base)
        prof = profmod.load(str(path), environ={})
        assert prof.name == p.candidate.id
        assert prof.files[1] == str(PROFILES_DIR / f"{BASE}.toml")
        want = profmod.load(BASE, overrides=at.override_items(p.candidate.items, base), environ={})
        assert at.resolved_values(str(path)) == at.resolved_values(BASE, at.override_items(p.candidate.items, base))
        assert prof.to_dict() | {"name": "", "files": "", "description": "", "overrides": ""} == \
            want.to_dict() | {"name": "", "files": "", "description": "", "overrides": ""}
        ids.add(at.build_id_of(prof.name))
    assert len(ids) == len(plan.singles) and at.build_id_of(BASE) not in ids
    flags = next(p for p in plan.singles if p.candidate.label == "no-plt-flag")
    prof = profmod.load(str(tmp_path / "candidates" / f"{flags.candidate.id}.toml"), environ={})
    assert prof.flags.cflags == ("-gdwarf-4", "-fno-plt")  # '+=' keeps the base's DWARF 4
    assert next(p for p in plan.singles if p.candidate.label == "full").candidate.id.startswith("at-lto-full-")


def test_same_items_give_the_same_id_across_runs():
    items = (at.Item("optimize", "lto", "full"),)
    assert at.candidate_id(BASE, "lto", "full", items, ()) == at.candidate_id(BASE, "lto", "full", items, ())
    assert at.candidate_id(BASE, "lto", "full", items, ()) != at.candidate_id("generic-pgo-lto", "lto", "full",
                                                                              items, ())


def test_best_toml_resolves_and_its_header_holds_the_figures(tmp_path):
    cand = at.Candidate("at-arch-v3-abc123", "arch", "v3", (at.Item("optimize", "arch", "march=x86-64-v3"),))
    header = at.best_header(
        run="autotune-x", command=["python", "-m", "perf", "autotune", "--budget", "2h"], cand=cand, base=BASE,
        vs_base={"geomean_ratio": 0.952, "geomean_significant": True},
        vs_debian={"geomean_ratio": 0.981, "geomean_significant": False},
        guard_vs_base={"geomean_ratio": 0.990, "geomean_significant": False},
        count_ratio=0.9871, cost={"builds": 5, "minutes": 113.4})
    dest = at.write_best(tmp_path / "best.toml", cand, base_ref=BASE, header=header)
    text = dest.read_text()
    assert "# latency vs workload-pgo-lto: 1.050x faster (geometric mean ratio 0.952, significant at 95%)" in text
    assert "# latency vs Debian /usr/bin/python3.11: 1.019x faster (geometric mean ratio 0.981, not significant" in text
    assert "# pyperformance guard vs workload-pgo-lto: 1.010x faster (geometric mean ratio 0.990, not" in text
    assert "0.9871x workload-pgo-lto's" in text and "5 build(s), 113 min" in text
    assert "# command: python -m perf autotune --budget 2h" in text
    prof = profmod.load(str(dest), environ={})
    assert prof.optimize.arch == "march=x86-64-v3" and prof.optimize.pgo == "on"
    assert prof.pgo.tasks == ("runtime-workloads",)


# ------------------------------------------------------------------------------------------ dry run

def test_dry_run_of_the_real_space_against_the_real_base(tmp_path):
    work = WorkArea(tmp_path / "home")
    lines = at.dry_run(budget_s=at.parse_budget("100h"), host=X86, work=work, check=always_reusable)
    text = "\n".join(lines)
    assert "base: workload-pgo-lto (cpython-3.11.2-workload-pgo-lto; not installed: built first)" in text
    assert "left out: compiler=clang-22: the base itself" in text
    assert "left out: arch=mcpu-host: requires machine=aarch64: this host is x86_64" in text
    assert "left out: interposition=no-semantic-interposition: requires shared" in text
    assert "BiSheng autotune loop (-fautotune-generate / llvm-autotune): left out: no BiSheng compiler" in text
    for label in ("compiler=gcc-12", "lto=full", "arch=x86-64-v3", "arch=native", "arch=x86-64-v2", "bolt=bolt",
                  "allocator=tcmalloc"):
        assert f"{label} [" in text
    assert "inline=inline-500 [" in text
    assert "not a key" not in text
    assert "dropped for the budget" not in text
    # A two-hour budget cannot hold them all here: the plan says what it drops.
    short = "\n".join(at.dry_run(budget_s=7200, host=X86, work=work, check=always_reusable))
    assert "dropped for the budget: at-" in short


def test_dry_run_with_an_installed_base_uses_its_data(tmp_path):
    work = WorkArea(tmp_path / "home")
    doc = base_manifest(work)
    text = "\n".join(at.dry_run(budget_s=1e6, host=X86, work=work, check=always_reusable))
    assert f"base profile data: {doc['profile_data']['path']}" in text
    assert "costs from the base build's recorded stages (cpython-3.11.2-workload-pgo-lto):" in text
    assert "profile data: reused (same compiler family" in text
    assert "profile data: trains itself (another compiler family" in text


def test_cli_dry_run_and_input_errors_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(at.HostFacts, "detect", classmethod(lambda cls: X86))
    space = write_space(tmp_path)
    assert cli.main(["autotune", "--budget", "90m", "--space", str(space), "--dry-run"]) == 0
    assert "stage 1: " in capsys.readouterr().out
    assert cli.main(["autotune", "--budget", "90x", "--dry-run"]) == 2
    assert cli.main(["autotune", "--budget", "1h", "--space", str(tmp_path / "none.toml"), "--dry-run"]) == 2
    assert cli.main(["autotune", "--budget", "1h", "--resume", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "--budget '90x'" in err and "none.toml" in err and "--resume" in err


# ------------------------------------------------------------------------------------------ the run, resumed

class Recorder:
    """Injected actions over recorded figures: builds 'install' a manifest; counts are the base's times a ratio;
    `stop_at` raises KeyboardInterrupt at that count (an interrupted run)."""

    def __init__(self, work: WorkArea, ratios: dict[str, float], fail: set[str] = frozenset(),
                 stop_at: int | None = None):
        self.work, self.ratios, self.fail, self.stop_at = work, ratios, fail, stop_at
        self.uncountable: set[str] = set()
        self.builds: list[tuple[str, str | None]] = []
        self.counts: list[str] = []
        self.confirms: list[list[str]] = []
        self.confirm_modes: list[bool] = []
        self.compared: list[str] = []
        self.recompared: dict[str, tuple[float, bool]] = {}
        self.kept_subjects: list[str] = []
        self.base_again: dict[str, float] = {}
        """Factor per target on the base's second count (a runtime target's count varies between runs)."""
        self.guard: dict[str, tuple[float, bool]] = {}
        """Guard geometric mean (ratio, significant) per id prefix; 1.0 and not significant otherwise."""

    def actions(self) -> at.Actions:
        return at.Actions(self.build, self.count, self.confirm, self.compare)

    def compare(self, out_dir, with_debian):
        """A kept confirmation compared again: `recompared` per id prefix (latency ratio, significant), else
        nothing (as if the directory were gone)."""
        self.compared.append(out_dir.name)
        if not self.recompared:
            return None
        def comp(cid, ratio, sig):
            return {"baseline": BASE, "changed": cid, "geomean_ratio": ratio, "geomean_significant": sig,
                    "rows": [{"name": "decode-b1", "unit": "s", "base_median": 0.0447, "base_stdev": 0.001,
                              "changed_median": 0.0447 * ratio, "changed_stdev": 0.001, "ratio": ratio,
                              "significant": sig, "t_score": 3.1, "n_base": 30, "n_changed": 30}]}
        names = [n for n in self.kept_subjects if n not in (BASE, "debian")]
        pick = {n: next((v for k, v in self.recompared.items() if n.startswith(k)), (1.0, False)) for n in names}
        return {"vs_base": {"latency": [comp(n, *pick[n]) for n in names],
                            "guard": [comp(n, 1.0, False) for n in names]}, "vs_debian": None}

    def build(self, profile_file, profile_data, log):
        stem = Path(profile_file).stem
        self.builds.append((stem, profile_data))
        bid = at.build_id_of(stem)
        label = next((k for k in self.ratios if stem.startswith(k)), stem)
        if label in self.fail:
            return at.BuildOutcome(False, 812.0, bid, "", str(log.parent / "verify.log"), "verify",
                                   "test_sys failed")
        base_manifest(self.work, bid)
        return at.BuildOutcome(True, 731.5, bid, str(self.work.install / bid / "bin" / "python3"), str(log))

    def count(self, name, python, out_dir, targets, log):
        if self.stop_at is not None and len(self.counts) == self.stop_at:
            raise KeyboardInterrupt
        self.counts.append(name)
        if any(name.startswith(k) for k in self.uncountable):
            raise UncountableError(f"{python}: valgrind cannot decode an instruction it executes (AVX-512)")
        ratio = 1.0 if name == "base" else next(v for k, v in self.ratios.items() if name.startswith(k))
        again = name == "base" and self.counts.count("base") > 1
        return {t: BASE_COUNTS[t] * ratio * (self.base_again.get(t, 1.0) if again else 1.0) for t in targets}

    def confirm(self, subjects, out_dir, targets, log, quick=True):
        names = [n for n, _ in subjects]
        self.confirms.append(names)
        self.confirm_modes.append(quick)

        def comp(base, changed, ratio, sig):
            return {"baseline": base, "changed": changed, "geomean_ratio": ratio, "geomean_significant": sig,
                    "rows": [{"name": "decode-b1", "unit": "s", "base_median": 0.0447, "base_stdev": 0.001,
                              "changed_median": 0.0447 * ratio, "changed_stdev": 0.001, "ratio": ratio,
                              "significant": sig, "t_score": 3.1, "n_base": 12, "n_changed": 12}]}

        lat = {n: 0.95 if n.startswith("at-arch-v3") else 0.99 for n in names[1:]}
        return {"vs_base": {"latency": [comp(names[0], n, r, r < 0.98) for n, r in lat.items()],
                            "guard": [comp(names[0], n, *next((v for k, v in self.guard.items()
                                                               if n.startswith(k)), (1.0, False)))
                                      for n in names[1:]]},
                "vs_debian": {"latency": [comp("debian", n, 0.97, True) for n in names if n != "debian"]}}


def test_interrupted_run_resumes_without_rebuilding_or_recounting(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path / "home"))
    work = WorkArea(tmp_path / "home")
    base_manifest(work)
    space = write_space(tmp_path, SPACE.replace('{ label = "mimalloc", set = ["optimize.allocator=mimalloc"] },',
                                                ""))
    ratios = {"at-lto-full": 0.990, "at-arch-v3": 0.975, "at-arch-native": 0.970, "at-arch-v2": 0.999,
              "at-allocator-tcmalloc": 0.960, "at-cflags": 1.001, "at-combined": 0.950}
    first = Recorder(work, ratios, fail={"at-arch-native"}, stop_at=4)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        at.run(budget_s=1e6, space_path=space, out=str(run_dir), actions=first.actions(), host=X86, work=work,
               check=always_reusable, say=lambda m: None)
    # base counted (twice: decode-b1 again for the noise floor), lto-full built and counted, arch-v3 built and
    # counted, native rejected, v2 built: then Ctrl-C.
    assert first.counts == ["base", "base", first.builds[0][0], first.builds[1][0]]
    assert [b[0].rsplit("-", 1)[0] for b in first.builds] == ["at-lto-full", "at-arch-v3", "at-arch-native",
                                                               "at-arch-v2"]
    assert all(b[1] == str(work.profiles / f"{BASE_BID}-30d75ab64a9f.profdata") for b in first.builds)
    log_lines = (run_dir / "autotune.jsonl").read_text().splitlines()
    with (run_dir / "autotune.jsonl").open("a") as fh:
        fh.write('{"id": "torn')  # killed mid-write: the torn line is ignored
    recs = [json.loads(x) for x in log_lines]
    assert [(r.get("id", "").rsplit("-", 1)[0], r["phase"]) for r in recs] == [
        ("", "run"), ("base", "screen"), ("base", "repeat"), ("at-lto-full", "build"), ("at-lto-full", "screen"),
        ("at-arch-v3", "build"), ("at-arch-v3", "screen"), ("at-arch-native", "build"), ("at-arch-v2", "build")]
    rejected = recs[7]
    assert rejected["verdict"] == "rejected" and rejected["failed_stage"] == "verify"
    assert rejected["log"].endswith("verify.log")
    with pytest.raises(InputError, match="already holds files"):
        at.run(budget_s=1e6, space_path=space, out=str(run_dir), actions=first.actions(), host=X86, work=work,
               check=always_reusable, say=lambda m: None)

    # The plan of what the interrupted run still has to do: its screened and rejected candidates stay, free.
    plan = "\n".join(at.dry_run(budget_s=1, resume=str(run_dir), host=X86, work=work, check=always_reusable))
    dropped = [ln.split()[4] for ln in plan.splitlines() if ln.startswith("dropped for the budget")]
    assert sorted(d.rsplit("-", 1)[0] for d in dropped) == ["at-allocator-tcmalloc", "at-arch-v2",
                                                            "at-cflags-no-plt-flag"]
    assert "stage 1: 3 candidate(s)" in plan

    second = Recorder(work, ratios, fail={"at-arch-native"})
    state = at.run(budget_s=1e6, resume=str(run_dir), actions=second.actions(), host=X86, work=work,
                   check=always_reusable, say=lambda m: None)
    built = [b[0].rsplit("-", 1)[0] for b in second.builds]
    assert built == ["at-allocator-tcmalloc", "at-cflags-no-plt-flag", "at-combined"]  # nothing built twice
    assert [c.rsplit("-", 1)[0] for c in second.counts] == ["at-arch-v2", "at-allocator-tcmalloc",
                                                            "at-cflags-no-plt-flag", "at-combined"]
    verdicts = {c["id"].rsplit("-", 1)[0]: c["verdict"] for c in state["candidates"]}
    assert verdicts == {"at-lto-full": "survives", "at-arch-v3": "survives", "at-arch-native": "rejected",
                        "at-arch-v2": "dropped", "at-allocator-tcmalloc": "survives",
                        "at-cflags-no-plt-flag": "dropped", "at-combined": "survives"}
    combo = next(c for c in state["candidates"] if c["dimension"] == "combined")
    assert combo["label"] == "full+v3+tcmalloc"
    # Finalists: the best two by counts (combined 0.950, tcmalloc 0.960), confirmed beside base and Debian.
    assert state["finalists"][0] == combo["id"] and state["finalists"][1].startswith("at-allocator-tcmalloc")
    assert second.confirms == [[BASE, "debian", *state["finalists"]]] if Path("/usr/bin/python3.11").exists() \
        else [[BASE, *state["finalists"]]]
    assert state.get("best") is None  # neither finalist was significantly faster in the latency run
    md = (run_dir / "autotune.md").read_text()
    assert "REJECTED (verify failed" in md and "no finalist won by the winner rule" in md
    assert not (run_dir / "best.toml").exists()

    third = Recorder(work, ratios)
    at.run(budget_s=1e6, resume=str(run_dir), actions=third.actions(), host=X86, work=work,
           check=always_reusable, say=lambda m: None)
    assert (third.builds, third.counts, third.confirms) == ([], [], [])

    # --confirm-full on a finished run: the same finalists measured again at perf bench's full settings, in a
    # directory of their own; a later quick resume keeps that evidence and measures nothing.
    fourth = Recorder(work, ratios)
    state = at.run(budget_s=1e6, resume=str(run_dir), confirm_quick=False, actions=fourth.actions(), host=X86,
                   work=work, check=always_reusable, say=lambda m: None)
    assert (fourth.builds, fourth.counts, fourth.confirm_modes) == ([], [], [False])
    assert fourth.confirms == second.confirms
    assert state["confirm"]["quick"] is False
    assert "perf bench at its full settings: 6 rounds x 5 values" in (run_dir / "autotune.md").read_text()
    recs = [json.loads(x) for x in (run_dir / "autotune.jsonl").read_text().splitlines()]
    assert [r["id"].split(":")[0] for r in recs if r["phase"] == "confirm"] == ["confirm", "confirm-full"]
    fifth = Recorder(work, ratios)
    state = at.run(budget_s=1e6, resume=str(run_dir), actions=fifth.actions(), host=X86, work=work,
                   check=always_reusable, say=lambda m: None)
    assert (fifth.builds, fifth.counts, fifth.confirms) == ([], [], [])
    assert state["confirm"]["quick"] is False


def test_a_candidate_valgrind_cannot_run_is_not_screened_and_the_search_goes_on(tmp_path, monkeypatch):
    """-march=native on an AVX-512 host: cachegrind stops at the first EVEX instruction. That candidate gets no
    count (verdict uncountable, the reason in the report) and the other candidates are searched as before."""
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path / "home"))
    work = WorkArea(tmp_path / "home")
    base_manifest(work)
    ratios = {"at-lto-full": 1.0, "at-arch-v3": 0.975, "at-arch-native": 0.9, "at-arch-v2": 0.999,
              "at-allocator-tcmalloc": 1.0, "at-allocator-mimalloc": 1.0, "at-cflags": 1.0}
    rec = Recorder(work, ratios)
    rec.uncountable = {"at-arch-native"}
    state = at.run(budget_s=1e6, space_path=write_space(tmp_path), out=str(tmp_path / "r"), actions=rec.actions(),
                   host=X86, work=work, check=always_reusable, say=lambda m: None)
    verdicts = {c["label"]: (c["verdict"], c["why"]) for c in state["candidates"]}
    assert verdicts["native"][0] == "uncountable" and "AVX-512" in verdicts["native"][1]
    assert verdicts["v3"][0] == "survives"
    assert not any(f.startswith("at-arch-native") for f in state["finalists"])
    assert "uncountable: not screened" in (tmp_path / "r" / "autotune.md").read_text()


def test_winner_becomes_best_toml_and_budget_skips_are_logged(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path / "home"))
    work = WorkArea(tmp_path / "home")
    base_manifest(work)
    text = SPACE.replace("finalists = 2", "finalists = 1")
    space = write_space(tmp_path, text)
    ratios = {"at-lto-full": 1.0, "at-arch-v3": 0.975, "at-arch-native": 0.999, "at-arch-v2": 0.999,
              "at-allocator-tcmalloc": 1.0, "at-allocator-mimalloc": 1.0, "at-cflags": 1.0}
    rec = Recorder(work, ratios)
    monkeypatch.setattr(at, "PROFILES_DIR", tmp_path / "profiles")
    (tmp_path / "profiles").mkdir()
    state = at.run(budget_s=1e6, space_path=space, out=str(tmp_path / "r1"), actions=rec.actions(), host=X86,
                   work=work, check=always_reusable, say=lambda m: None, argv=["python", "-m", "perf", "autotune"],
                   write_profile=True)
    copy = tmp_path / "profiles" / "autotune-r1.toml"
    assert state["best"]["copy"] == str(copy) and copy.read_text() == (tmp_path / "r1" / "best.toml").read_text()
    assert state["best"]["label"] == "arch=v3"
    best = (tmp_path / "r1" / "best.toml").read_text()
    assert "1.053x faster (geometric mean ratio 0.950, significant at 95%)" in best
    assert "latency vs Debian /usr/bin/python3.11" in best
    assert profmod.load(str(tmp_path / "r1" / "best.toml"), environ={}).optimize.arch == "march=x86-64-v3"
    assert "compiler_cache" not in best
    assert (tmp_path / "r1" / "plots" / "counts.png").is_file()
    assert (tmp_path / "r1" / "plots" / "confirm.png").is_file()
    md = (tmp_path / "r1" / "autotune.md").read_text()
    v3 = state["best"]["id"]
    assert f"| `{v3}` | 0.950 | 1.000 (n.s.) | 0.970 | - |" in md
    assert "Winner rule `latency`" in md
    assert f"**Best:** `{v3}` (arch=v3)" in md

    # A budget with room for the base count only (600 s estimated): every build is dropped, and the report says so.
    tiny = Recorder(work, ratios)
    space = write_space(tmp_path, text.replace("starting_points = []", 'starting_points = ["native"]'), "s2.toml")
    state = at.run(budget_s=700, space_path=space, out=str(tmp_path / "r2"), actions=tiny.actions(), host=X86,
                   work=work, check=always_reusable, say=lambda m: None)
    assert tiny.builds == [] and tiny.counts == ["base", "base"]
    assert any("dropped by the plan" in s for s in state["skipped"])
    assert "skipped for the budget" in (tmp_path / "r2" / "autotune.md").read_text()
    skips = [json.loads(x) for x in (tmp_path / "r2" / "autotune.jsonl").read_text().splitlines()]
    assert [(r["id"], r["phase"]) for r in skips if r.get("verdict") == "skipped"] == [("native", "build")]


def comparison(cid: str, ratio: float, sig: bool, rows: dict[str, tuple[float, bool]]) -> dict:
    return {"baseline": BASE, "changed": cid, "geomean_ratio": ratio, "geomean_significant": sig,
            "rows": [{"name": n, "ratio": r, "significant": rs} for n, (r, rs) in rows.items()]}


# The shape of the first real full confirmation here (docs/results.md, autotune-20261201): at-lto-full's latency
# 1.009 with no target significant, its guard 0.971 significant.
N_S = {"op-dispatch": (1.159, False), "decode-b1": (1.011, False), "decode-b8-graph": (0.876, False)}


@pytest.mark.parametrize("rule, latency, guard, wins, said", [
    ("latency", (0.95, True, {"decode-b1": (0.95, True)}), (1.0, False), True, "0.950x the base's, significant"),
    ("latency", (1.009, False, N_S), (0.971, True), False, "not significant"),
    ("latency", (0.95, True, {"decode-b1": (0.95, True)}), (1.02, True), False, "guard significantly slower"),
    ("counts", (1.009, False, N_S), (0.971, True), True, "guard 0.971x, significant; no target significantly"),
    ("counts", (0.95, True, {"decode-b1": (0.95, True)}), (1.0, False), True, "no target significantly slower"),
    ("counts", (1.009, False, N_S), (0.99, False), False, "neither significantly faster"),
    ("counts", (0.98, False, {"op-dispatch": (1.08, True), "decode-b1": (0.9, True)}), (0.95, True), False,
     "significantly slower on op-dispatch"),
    ("counts", (1.04, True, N_S), (0.95, True), False, "significantly slower on the geometric mean"),
    ("counts", (0.95, True, {"decode-b1": (0.95, True)}), (1.02, True), False, "guard significantly slower"),
])
def test_winner_rules(rule, latency, guard, wins, said):
    comps = {"latency": [comparison("c", *latency)], "guard": [comparison("c", *guard, {})]}
    v = at.confirm_verdict("c", comps, rule)
    assert v["wins"] is wins and said in v["why"] and v["rule"] == rule


def test_an_unknown_winner_rule_is_refused_naming_the_flag():
    with pytest.raises(InputError, match="--winner fastest: choose latency or counts"):
        at.with_options(at.load_space(at.DEFAULT_SPACE), winner="fastest")


def test_a_resume_with_another_winner_rule_judges_the_kept_measurements_again(tmp_path, monkeypatch):
    """The latency rule finds no winner; a resume with --winner counts measures nothing and picks, among the
    finalists whose guard is significantly faster and which are slower nowhere, the one with fewer instructions."""
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path / "home"))
    work = WorkArea(tmp_path / "home")
    base_manifest(work)
    ratios = {"at-lto-full": 0.990, "at-arch-v3": 0.999, "at-arch-native": 1.0, "at-arch-v2": 1.0,
              "at-allocator-tcmalloc": 0.980, "at-allocator-mimalloc": 1.0, "at-cflags": 1.0, "at-combined": 0.97}
    space = write_space(tmp_path, SPACE.replace("finalists = 2", "finalists = 3"))
    first = Recorder(work, ratios)
    first.guard = {"at-combined": (1.01, False), "at-allocator-tcmalloc": (0.97, True), "at-lto-full": (0.96, True)}
    state = at.run(budget_s=1e6, space_path=space, out=str(tmp_path / "r"), actions=first.actions(), host=X86,
                   work=work, check=always_reusable, say=lambda m: None)
    assert state.get("best") is None and not (tmp_path / "r" / "best.toml").exists()
    finals = [f.rsplit("-", 1)[0] for f in state["finalists"]]
    assert finals == ["at-combined", "at-allocator-tcmalloc", "at-lto-full"]

    again = Recorder(work, ratios)
    state = at.run(budget_s=1e6, resume=str(tmp_path / "r"), winner="counts", actions=again.actions(), host=X86,
                   work=work, check=always_reusable, say=lambda m: None)
    assert (again.builds, again.counts, again.confirms) == ([], [], [])
    # tcmalloc and lto-full both have a significantly faster guard and are slower nowhere; the fewest
    # instructions decide (tcmalloc 0.98 over lto-full 0.99, though lto-full's guard is faster); the combination
    # (0.97) is faster on neither.
    assert state["best"]["label"] == "allocator=tcmalloc"
    verdicts = {c["id"].rsplit("-", 1)[0]: c.get("confirm", {}).get("wins") for c in state["candidates"]}
    assert (verdicts["at-combined"], verdicts["at-lto-full"]) == (False, True)
    best = (tmp_path / "r" / "best.toml").read_text()
    assert "# chosen by the winner rule 'counts'" in best
    assert "pyperformance guard vs workload-pgo-lto: 1.031x faster (geometric mean ratio 0.970, significant" in best
    assert "Winner rule `counts`" in (tmp_path / "r" / "autotune.md").read_text()

    # The kept confirmation compared again (a newer version's statistics): its new figures decide.
    third = Recorder(work, ratios)
    third.kept_subjects = state["confirm"]["subjects"]
    third.recompared = {"at-lto-full": (0.95, True)}
    state = at.run(budget_s=1e6, resume=str(tmp_path / "r"), winner="latency", actions=third.actions(), host=X86,
                   work=work, check=always_reusable, say=lambda m: None)
    assert third.confirms == [] and third.compared == [at.confirm_dir(tmp_path / "r", third.kept_subjects, True).name]
    assert state["best"]["label"] == "lto=full"
    assert any("compared again from its measurements" in n for n in state["notes"])

    # A run started with --winner counts keeps its rule on a resume that names none.
    keep = Recorder(work, ratios)
    keep.guard = first.guard
    state = at.run(budget_s=1e6, space_path=space, out=str(tmp_path / "r3"), winner="counts",
                   actions=keep.actions(), host=X86, work=work, check=always_reusable, say=lambda m: None)
    assert state["best"]["label"] == "allocator=tcmalloc"
    state = at.run(budget_s=1e6, resume=str(tmp_path / "r3"), actions=Recorder(work, ratios).actions(), host=X86,
                   work=work, check=always_reusable, say=lambda m: None)
    assert state["winner"] == "counts" and state["best"]["label"] == "allocator=tcmalloc"
    plan = "\n".join(at.dry_run(budget_s=1e6, resume=str(tmp_path / "r3"), host=X86, work=work,
                                check=always_reusable))
    assert "winner rule 'counts'" in plan


def test_noise_floor_is_the_mean_spread_and_raises_the_bar():
    noise = at.noise_of({"pure-python": 100.0, "decode-b1": 1000.0}, {"decode-b1": 1020.0})
    assert noise == {"pure-python": 0.0, "decode-b1": pytest.approx(0.02)}
    assert at.noise_floor(noise) == pytest.approx(0.01)
    base = {"pure-python": 100.0, "decode-b1": 1000.0}
    _, geo, verdict, why = at.screen_verdict({"pure-python": 99.0, "decode-b1": 990.0}, base, 0.005)
    assert verdict == "survives" and geo == pytest.approx(0.99)
    _, _, verdict, why = at.screen_verdict({"pure-python": 99.0, "decode-b1": 990.0}, base, 0.005, noise)
    assert verdict == "dropped" and "not below 0.985: threshold 0.005 + noise floor 0.0100" in why


def test_the_base_is_counted_twice_and_its_spread_drops_a_candidate_inside_the_noise(tmp_path, monkeypatch):
    """decode-b1's second base count is 2% higher: the floor is 0.01 over the two targets, the reference their
    mean; lto-full (0.990) is inside the noise and dropped, arch-v3 (0.975) survives. With base_repeat = false the
    same counts let lto-full through, and the base is counted once."""
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path / "home"))
    work = WorkArea(tmp_path / "home")
    base_manifest(work)
    ratios = {"at-lto-full": 0.990, "at-lto-thin": 1.0, "at-arch-v3": 0.975, "at-arch-native": 1.0,
              "at-arch-v2": 1.0, "at-allocator": 1.0, "at-cflags": 1.0, "at-combined": 0.97}
    rec = Recorder(work, ratios)
    rec.base_again = {"decode-b1": 1.02}
    state = at.run(budget_s=1e6, space_path=write_space(tmp_path), out=str(tmp_path / "r"), actions=rec.actions(),
                   host=X86, work=work, check=always_reusable, say=lambda m: None)
    assert rec.counts[:2] == ["base", "base"]
    assert state["noise"]["floor"] == pytest.approx(0.01)
    verdicts = {c["label"]: c["verdict"] for c in state["candidates"]}
    assert (verdicts["full"], verdicts["v3"]) == ("dropped", "survives")
    v3 = next(c for c in state["candidates"] if c["label"] == "v3")
    assert v3["screen"]["ratios"]["decode-b1"] == pytest.approx(0.975 / 1.01)  # against the mean of the two
    assert "Noise floor 0.0100" in (tmp_path / "r" / "autotune.md").read_text()

    once = Recorder(work, ratios)
    once.base_again = {"decode-b1": 1.02}
    state = at.run(budget_s=1e6, space_path=write_space(tmp_path, SPACE.replace(
        "finalists = 2", "finalists = 2\nbase_repeat = false"), "s2.toml"), out=str(tmp_path / "r2"),
        actions=once.actions(), host=X86, work=work, check=always_reusable, say=lambda m: None)
    assert once.counts.count("base") == 1 and "noise" not in state
    assert {c["label"]: c["verdict"] for c in state["candidates"]}["full"] == "survives"


def test_hostpgo_set_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTPGO_SET", "optimize.lto=full")
    with pytest.raises(InputError, match="HOSTPGO_SET is set"):
        at.run(budget_s=60, space_path=write_space(tmp_path), out=str(tmp_path / "r"),
               actions=Recorder(WorkArea(tmp_path), {}).actions(), host=X86, work=WorkArea(tmp_path),
               say=lambda m: None)


def test_base_build_failure_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTPGO_HOME", str(tmp_path / "home"))
    work = WorkArea(tmp_path / "home")
    rec = Recorder(work, {BASE: 1.0}, fail={BASE})
    with pytest.raises(HostpgoError, match="failed to build"):
        at.run(budget_s=1e6, space_path=write_space(tmp_path), out=str(tmp_path / "r"), actions=rec.actions(),
               host=X86, work=work, check=always_reusable, say=lambda m: None)
    assert rec.builds == [(BASE, None)]


# ------------------------------------------------------------------------------------------ the real actions

class FakeRunner:
    """Stands in for hostpgo.runner.Runner: records argv, plays a side effect."""

    calls: list[list[str]] = []
    effect = None

    def __init__(self, log_path=None):
        self.log_path = log_path

    def run(self, argv, *, collect=None, **kw):
        FakeRunner.calls.append([str(a) for a in argv])
        return FakeRunner.effect(argv, collect)


def test_real_build_reports_the_failed_stage_and_its_log(tmp_path, monkeypatch):
    from hostpgo.errors import CommandError

    bid = at.build_id_of("at-arch-v3-abc123")
    stage_log = tmp_path / "logs" / bid / "verify.log"

    def fail(argv, collect):
        collect.append("  build                       559.4 s  ran")
        collect.append(f"error: stage 'verify' of {bid} failed (log: {stage_log}):")
        raise CommandError("exit 4", argv=list(argv), returncode=4, log_tail="test_sys failed")

    FakeRunner.calls, FakeRunner.effect = [], fail
    monkeypatch.setattr(at, "Runner", FakeRunner)
    build = at._real_build(WorkArea(tmp_path / "home"))
    out = build(tmp_path / "at-arch-v3-abc123.toml", "/s/base.profdata", tmp_path / "b.log")
    assert (out.ok, out.failed_stage, out.log, out.build_id) == (False, "verify", str(stage_log), bid)
    assert FakeRunner.calls[0][-6:] == ["build", "cpython", "--profile", str(tmp_path / "at-arch-v3-abc123.toml"),
                                        "--profile-data", "/s/base.profdata"]

    FakeRunner.effect = lambda argv, collect: 0
    out = build(tmp_path / "at-arch-v3-abc123.toml", None, tmp_path / "b.log")
    assert out.ok and out.python == str(tmp_path / "home" / "install" / bid / "bin" / "python3")
    assert "--profile-data" not in FakeRunner.calls[-1]


@pytest.mark.parametrize("rc", [130, 143, -2, -15])
def test_an_interrupted_child_interrupts_the_search_and_is_not_recorded_as_failed(tmp_path, monkeypatch, rc):
    """A search started with nohup ignores SIGINT while its build does not: the build stops alone with 130. That
    is an interruption (resume with --resume), not a failed build that a resume would then never retry."""
    from hostpgo.errors import CommandError

    def stopped(argv, collect):
        raise CommandError(f"exit {rc}", argv=list(argv), returncode=rc, log_tail="interrupted")

    FakeRunner.calls, FakeRunner.effect = [], stopped
    monkeypatch.setattr(at, "Runner", FakeRunner)
    build = at._real_build(WorkArea(tmp_path / "home"))
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "gcc-pgo-lto.toml", None, tmp_path / "b.log")
    with pytest.raises(KeyboardInterrupt):
        at._real_count("at-x", "/p/bin/python3", tmp_path / "c", ["pure-python"], tmp_path / "l.log")
    with pytest.raises(KeyboardInterrupt):
        at._real_confirm([(BASE, "/b"), ("at-x", "/p")], tmp_path / "f", ["decode-b1"], tmp_path / "l.log")


def test_real_count_turns_the_childs_uncountable_message_into_uncountable(tmp_path, monkeypatch):
    from hostpgo.errors import CommandError
    from perf import counters

    # What the child prints: its console's "error: " and UncountableError's reason, wrapped.
    vex = "vex amd64->IR: unhandled instruction bytes: 0x62 0xF1"
    reason = counters.uncountable_reason(Path("/p/bin/python3"), vex)
    said = "error: " + reason[:60] + "\n" + reason[60:]

    def child(argv, collect):
        raise CommandError("exit 6", argv=list(argv), returncode=6, log_tail=said)

    FakeRunner.calls, FakeRunner.effect = [], child
    monkeypatch.setattr(at, "Runner", FakeRunner)
    with pytest.raises(UncountableError, match=r"^/p/bin/python3: valgrind cannot decode .* \(AVX-512"):
        at._real_count("at-x", "/p/bin/python3", tmp_path / "c", ["pure-python"], tmp_path / "l.log")
    FakeRunner.effect = lambda argv, collect: (_ for _ in ()).throw(
        CommandError("exit 4", argv=list(argv), returncode=4, log_tail="no space left on device"))
    with pytest.raises(CommandError):
        at._real_count("at-x", "/p/bin/python3", tmp_path / "c", ["pure-python"], tmp_path / "l.log")


def test_real_count_and_confirm_read_what_perf_wrote(tmp_path, monkeypatch):
    def counters(argv, collect):
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        res = {t: {"per_unit": {"instructions": n}} for t, n in BASE_COUNTS.items()}
        (out / "run.json").write_text(json.dumps({"counters": {"results": {"at-x": res}}}))
        return 0

    FakeRunner.calls, FakeRunner.effect = [], counters
    monkeypatch.setattr(at, "Runner", FakeRunner)
    got = at._real_count("at-x", "/p/bin/python3", tmp_path / "c", list(BASE_COUNTS), tmp_path / "l.log")
    assert got == BASE_COUNTS
    argv = FakeRunner.calls[0]
    assert argv[2:4] == ["perf", "counters"] and argv[argv.index("--backend") + 1] == "cachegrind"
    assert argv[argv.index("--interp") + 1] == "at-x=/p/bin/python3"

    def bench(argv, collect):
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.json").write_text(json.dumps({"latency": [], "guard": []}))
        return 0

    def report_vs(run_dir, baseline=None):
        (Path(run_dir) / f"comparison-vs-{baseline}.json").write_text(json.dumps({"latency": ["x"]}))

    from perf import report

    monkeypatch.setattr(report, "build", report_vs)
    FakeRunner.calls, FakeRunner.effect = [], bench
    res = at._real_confirm([(BASE, "/b"), ("debian", "/usr/bin/python3.11"), ("at-x", "/p")], tmp_path / "f",
                           ["decode-b1"], tmp_path / "l.log")
    assert res == {"vs_base": {"latency": [], "guard": []}, "vs_debian": {"latency": ["x"]}}
    assert "--quick" in FakeRunner.calls[0] and "--guard-fast" in FakeRunner.calls[0]
    at._real_confirm([(BASE, "/b"), ("at-x", "/p")], tmp_path / "g", ["decode-b1"], tmp_path / "l.log", quick=False)
    assert "--quick" not in FakeRunner.calls[1] and "--guard-fast" in FakeRunner.calls[1]
    argv = FakeRunner.calls[0]
    assert argv[argv.index("--stages") + 1] == "latency,guard"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--interp"] == [
        f"{BASE}=/b", "debian=/usr/bin/python3.11", "at-x=/p"]

    # A kept confirmation compared again: its reports regenerated, nothing run; a directory without its
    # measurements gives nothing.
    built = []

    def report_again(run_dir, baseline=None):
        built.append(baseline)
        name = "comparison.json" if baseline is None else f"comparison-vs-{baseline}.json"
        (Path(run_dir) / name).write_text(json.dumps({"latency": [baseline or "base"]}))

    monkeypatch.setattr(report, "build", report_again)
    FakeRunner.calls = []
    assert at._real_compare(tmp_path / "gone", True) is None
    (tmp_path / "f" / "run.json").write_text("{}")
    assert at._real_compare(tmp_path / "f", True) == {"vs_base": {"latency": ["base"]},
                                                       "vs_debian": {"latency": ["debian"]}}
    assert built == [None, "debian"] and FakeRunner.calls == []


def test_real_space_with_the_build_side_keys_plans_them_and_writes_loadable_files(tmp_path):
    """The real space's tuning.* and optimize.compiler_cache items against the real profile schema."""
    work = WorkArea(tmp_path / "home")
    base_manifest(work)
    space = at.load_space(at.DEFAULT_SPACE)
    plan = at.plan_search(space, budget_s=1e9, host=X86, work=work, check=always_reusable)
    labels = [f"{p.candidate.dimension}={p.candidate.label}" for p in plan.singles]
    for want in ("inline=inline-500", "split=split-machine-functions", "plt=no-plt", "align=functions-64",
                 "ceval=ceval-inline-1000", "dictobject=dict-unroll", "obmalloc=obmalloc-align-64"):
        assert want in labels
    assert dict(plan.left_out)["ceval=ceval-no-gcse"] == ("requires family=gcc: the candidate's compiler family "
                                                          "is clang")
    ceval = next(p for p in plan.singles if p.candidate.label == "ceval-inline-1000")
    assert ceval.rebuilds.startswith("the named objects")
    path = at.write_candidate_file(tmp_path / f"{ceval.candidate.id}.toml", ceval.candidate, base_ref=BASE,
                                   common=space.common, base_profile=profmod.load(BASE, environ={}))
    per_file = at.resolved_values(str(path))["tuning"]["per_file"]
    assert dict(per_file) == {"Python/ceval.c": ("-mllvm", "-inline-threshold=1000")}  # the model's pairs
    items, _ = at.merge_items([ceval.candidate.items, next(p for p in plan.singles
                                                           if p.candidate.label == "dict-unroll").candidate.items])
    assert items[0].value == {"Python/ceval.c": ["-mllvm", "-inline-threshold=1000"],
                              "Objects/dictobject.c": ["-funroll-loops"]}
