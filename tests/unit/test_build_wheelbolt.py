"""bolt-wheel without running anything: callgrind parsing and conversion, address mapping, [bolt.stock], the
wheel's RECORD and names, and the plan's stages and keys."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from pathlib import Path

import pytest

from buildsys.pipeline import bolt, callgrind, wheelbolt
from buildsys.pipeline.callgrind import AddressMapping, CallgrindError
from buildsys.toolchain import profile
from hostpgo.errors import HostpgoError, InputError, SettingsError

RECORDED = Path(__file__).resolve().parent.parent / "fixtures" / "callgrind" / "hotpkg.callgrind"
"""A real callgrind 3.19 output (--instr-atstart=no --dump-instr=yes --compress-strings=no --compress-pos=no,
instrumentation switched on around one ctypes call of a `gcc -s` library), trimmed to two objects' blocks."""
LIBHOT = "/site/hotpkg/libhot.so"
LIBFFI = "/usr/lib/x86_64-linux-gnu/libffi.so.8.1.2"
LIBHOT_TEXT = ((0x1000, 0x11D1),)
"""The executable PT_LOAD of that libhot.so (vaddr 0x1000, memsz 0x1d1)."""


# ---------------------------------------------------------------------------------------------
# Parsing a recorded output.

def test_recorded_output_gives_own_counts_per_object_and_address() -> None:
    cmd, counts = callgrind.parse(RECORDED.read_text(), str(RECORDED))
    assert cmd == "/venv/bin/python drv.py"
    assert set(counts) == {LIBHOT, LIBFFI}
    hot = counts[LIBHOT]
    assert len(hot) == 38
    assert sum(hot.values()) == 1_403_672
    assert hot[0x1110] == 4900  # 98 + 4802: the same address listed in two contexts is summed
    assert hot[0x1140] == 100_000  # step() ran once per loop iteration
    # The cost line after `calls=` is the callee's inclusive cost, not the call instruction's own count.
    assert counts[LIBFFI][0x11B7] == 1 + 99_999
    assert sum(counts[LIBFFI].values()) == 600_008


def test_callgrind_lists_a_stripped_callee_under_its_callers_object_and_the_range_check_drops_it() -> None:
    # hot() (libhot 0x11a0..0x11c7), entered from libffi's stack-switching ffi_call, is listed under ob=libffi;
    # its addresses are libhot's. As libffi's they fall outside libffi's text (0x2000-0x7929): dropped.
    _, counts = callgrind.parse(RECORDED.read_text())
    libffi_text = ((0x2000, 0x7929),)
    mapping = callgrind.file_bias(counts[LIBFFI], libffi_text, min_fraction=0.0)
    assert (mapping.inside, mapping.outside) == (0, 600_008)
    assert callgrind.pre_aggregated(counts[LIBFFI], mapping, libffi_text) == "E instructions\n"


def test_pre_aggregated_lines_from_the_recorded_output() -> None:
    _, counts = callgrind.parse(RECORDED.read_text())
    mapping = callgrind.file_bias(counts[LIBHOT], LIBHOT_TEXT)
    assert mapping == AddressMapping(0, 1_403_672, 0)  # callgrind gives link-time addresses: no bias
    lines = callgrind.pre_aggregated(counts[LIBHOT], mapping, LIBHOT_TEXT).splitlines()
    assert lines[0] == "E instructions"
    assert lines[1:4] == ["S 1100 98", "S 110a 98", "S 110d 98"]
    assert "S 1110 4900" in lines and "S 1140 100000" in lines
    assert len(lines) == 1 + 38
    addrs = [int(x.split()[1], 16) for x in lines[1:]]
    assert addrs == sorted(addrs)


HEADER = "version: 1\ncmd: prog\npositions: instr line\nevents: Ir Dr\n"


def test_compressed_names_and_relative_positions() -> None:
    text = HEADER + (
        "ob=(1) /lib/a.so\nfn=(1) 0x10\n0x10 3 5 1\n+2 * 7\n-1 +1 2\n"
        "ob=(2) /lib/b.so\nfn=(2) f\n0x40 1 1\n"
        "ob=(1)\nfn=(1)\n0x10 3 10\n"
        "cob=(2)\ncfn=(2)\ncalls=3 0x40 1\n0x11 1 999\n* * 4\n")
    _, counts = callgrind.parse(text)
    assert counts["/lib/a.so"] == {0x10: 5 + 10, 0x12: 7, 0x11: 2 + 4}  # `ob=(1)` names a.so again
    assert counts["/lib/b.so"] == {0x40: 1}  # cob= names the callee; the line after calls= is not b's own cost


def test_event_column_and_trailing_zero_costs() -> None:
    text = HEADER.replace("events: Ir Dr", "events: Dr Ir") + "ob=/x.so\n0x1 0 4 9\n0x2 0 4\n"
    _, counts = callgrind.parse(text)
    assert counts["/x.so"] == {0x1: 9}  # 0x2 has no Ir column: zero


@pytest.mark.parametrize("text, message", [
    ("positions: line\nevents: Ir\n", "--dump-instr=yes"),
    ("positions: instr line\nevents: Dr\n", "event 'Ir' not recorded"),
    ("events: Ir\n", "no `positions:` line"),
    ("positions: instr line\nevents: Ir\nob=(4)\n", "ob=(4) used before it was named"),
])
def test_outputs_that_cannot_make_a_profile_say_why(text: str, message: str) -> None:
    with pytest.raises(CallgrindError, match=message.replace("(", r"\(").replace(")", r"\)")):
        callgrind.parse(text)


def test_merge_sums_runs() -> None:
    a = ("a", {"/x.so": {1: 2, 3: 4}})
    b = ("b", {"/x.so": {1: 10}, "/y.so": {5: 1}})
    prof = callgrind.merge([a, b])
    assert prof.counts == {"/x.so": {1: 12, 3: 4}, "/y.so": {5: 1}}
    assert prof.commands == ("a", "b") and prof.grand_total == 17 and prof.total("/x.so") == 16


# ---------------------------------------------------------------------------------------------
# Objects and addresses.

def test_objects_match_by_path_then_maps_then_a_unique_base_name() -> None:
    objs = ["/v/site/pkg/lib/liba.so", "/real/libb.so", "/other/libc.so", "/x/libd.so", "/y/libd.so"]
    libs = {"pkg/lib/liba.so": "/v/site/pkg/lib/../lib/liba.so", "pkg/libb.so": "/v/site/pkg/libb.so",
            "pkg/libc.so": "/v/site/pkg/libc.so", "pkg/libd.so": "/v/site/pkg/libd.so", "pkg/libe.so": "/v/libe.so"}
    got = {m.library: (m.obj, m.rule) for m in callgrind.match_objects(objs, libs, {"pkg/libb.so": "/real/libb.so"})}
    assert got["pkg/lib/liba.so"] == ("/v/site/pkg/lib/liba.so", "path")
    assert got["pkg/libb.so"] == ("/real/libb.so", "maps")
    assert got["pkg/libc.so"] == ("/other/libc.so", "basename")
    assert got["pkg/libd.so"] == (None, "ambiguous: /x/libd.so, /y/libd.so")
    assert got["pkg/libe.so"] == (None, "absent")


def test_addresses_outside_the_text_take_the_load_base_from_the_maps() -> None:
    counts = {0x7F0000001100: 5, 0x7F0000001140: 95}
    m = callgrind.file_bias(counts, LIBHOT_TEXT, load_base=0x7F0000000000)
    assert m == AddressMapping(0x7F0000000000, 100, 0)
    assert callgrind.pre_aggregated(counts, m, LIBHOT_TEXT) == "E instructions\nS 1100 5\nS 1140 95\n"
    with pytest.raises(CallgrindError, match="same file the process loaded"):
        callgrind.file_bias(counts, LIBHOT_TEXT)


def test_readelf_executable_segments() -> None:
    text = """
Program Headers:
  Type           Offset   VirtAddr           PhysAddr           FileSiz  MemSiz   Flg Align
  LOAD           0x000000 0x0000000000000000 0x0000000000000000 0x000420 0x000420 R   0x1000
  LOAD           0x001000 0x0000000000001000 0x0000000000001000 0x0001d1 0x0001d1 R E 0x1000
  LOAD           0x002e68 0x0000000000003e68 0x0000000000003e68 0x0001a0 0x0001a8 RW  0x1000
  LOAD           0x200000 0x0000000000200000 0x0000000000200000 0x000398 0x000398 R E 0x200000
  GNU_STACK      0x000000 0x0000000000000000 0x0000000000000000 0x000000 0x000000 RW  0x10
"""
    assert wheelbolt.exec_ranges(text) == ((0x1000, 0x11D1), (0x200000, 0x200398))


def test_functions_overwritten_from_llvm_bolt_output() -> None:
    assert wheelbolt.functions_overwritten("BOLT-INFO: x\nBOLT: 598 out of 34676 functions were overwritten.\n") \
        == (598, 34676)
    assert wheelbolt.functions_overwritten("BOLT-INFO: nothing") is None


# ---------------------------------------------------------------------------------------------
# Settings: [bolt.stock], packages, collector.

def test_stock_defaults_are_the_non_relocation_set(tmp_path: Path) -> None:
    s = profile.load("baseline", environ={}).bolt_stock
    assert s.apply == ("-reorder-blocks=ext-tsp", "-split-functions", "-split-all-cold")
    assert (s.collector, s.steps) == ("auto", 24)
    assert "bolt.stock.apply" not in profile.loader().resolve("baseline", environ={}).origins  # the default
    for refused in ("-reorder-functions", "-icf", "--relocs", "-instrument", "-hugify"):
        assert not any(o.startswith(refused) for o in s.apply)


def test_stock_keys_from_a_profile_chain_and_the_command_line(tmp_path: Path) -> None:
    base = tmp_path / "base.toml"
    base.write_text('[bolt.stock]\nsteps = 8\ncollector = "callgrind"\n')
    child = tmp_path / "child.toml"
    child.write_text('extends = "base.toml"\n[bolt]\ntimeout = 60\n[bolt.stock]\nsteps = 4\n')
    sets = ["bolt.stock.apply=['-reorder-blocks=ext-tsp']"]
    s = profile.load(str(child), environ={}, overrides=sets).bolt_stock
    assert (s.steps, s.collector, s.apply) == (4, "callgrind", ("-reorder-blocks=ext-tsp",))
    assert profile.load(str(child), environ={}).bolt.timeout == 60  # [bolt]'s own keys beside its sub-table
    origins = profile.loader().resolve(str(child), environ={}, sets=sets).origins
    assert str(origins["bolt.stock.steps"]) == str(child) and str(origins["bolt.stock.collector"]) == str(base)
    assert str(origins["bolt.stock.apply"]).startswith("command line --set")


@pytest.mark.parametrize("sets, message", [
    (["bolt.stock.nope=1"], "unknown key 'bolt.stock.nope'"),
    (["bolt.stock.steps=0"], "key 'bolt.stock.steps' has value 0"),
    (["bolt.stock.collector=cpu-clock"], "allowed values"),
])
def test_bad_stock_overrides_name_their_source(sets: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as e:
        profile.load("baseline", environ={}, overrides=sets)
    assert "command line --set" in str(e.value)


def test_bad_stock_key_in_a_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[bolt.stock]\nsteps = "many"\n')
    with pytest.raises(SettingsError, match=r"bad.toml: key 'bolt.stock.steps' must be int"):
        profile.load(str(bad), environ={})


def test_stock_keys_are_in_the_profile_schema_with_docs() -> None:
    keys = profile.SCHEMA["bolt.stock"]
    assert set(keys) == {"apply", "collector", "steps", "timeout"}
    assert all(k.doc for k in keys.values())


def test_package_lists_are_data() -> None:
    ms = wheelbolt.package_settings("mindspore")
    assert len(ms["libraries"]) == 14 and "mindspore/lib/plugin/libmindspore_ops_cpu.so" in ms["libraries"]
    assert ms["libraries"][-2:] == ["mindspore/lib/libdnnl.so.3", "mindspore/lib/libmindspore_backend_common.so"]
    assert wheelbolt.package_settings("ray")["libraries"] == ["ray/_raylet.so"]
    assert wheelbolt.package_settings("ray")["workloads"] == ["ray-decode"]
    with pytest.raises(InputError, match="no \\[packages.torch\\]"):
        wheelbolt.package_settings("torch")


def test_collector_follows_branch_sampling_and_never_offers_timer_samples() -> None:
    lbr, none = bolt.Sampling(True, "ok"), bolt.Sampling(False, "no LBR")
    assert wheelbolt.choose_collector("auto", lbr, valgrind=True)[0] == "perf"
    assert wheelbolt.choose_collector("auto", none, valgrind=True)[0] == "callgrind"
    assert wheelbolt.choose_collector("callgrind", lbr, valgrind=True)[0] == "callgrind"
    with pytest.raises(InputError, match="cpu-clock"):
        wheelbolt.choose_collector("perf", none, valgrind=True)
    with pytest.raises(InputError, match="valgrind"):
        wheelbolt.choose_collector("auto", none, valgrind=False)


# ---------------------------------------------------------------------------------------------
# The wheel.

def test_record_hash_is_urlsafe_base64_sha256_without_padding() -> None:
    data = b"hello\n"
    want = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")
    assert wheelbolt.b64_sha256(data) == want == wheelbolt.b64_sha256(hashlib.sha256(data).hexdigest())
    rows = wheelbolt.parse_record(f"a/b.py,{want},6\npkg-1.dist-info/RECORD,,\n")
    assert rows[0] == wheelbolt.RecordEntry("a/b.py", hashlib.sha256(data).hexdigest(), 6)
    assert rows[1] == wheelbolt.RecordEntry("pkg-1.dist-info/RECORD", "", None)


def test_versions_and_file_names() -> None:
    assert wheelbolt.local_version("2.10.0", "1b371d14") == "2.10.0+bolt.1b371d14"
    assert wheelbolt.local_version("2.10.0+cpu", "1b371d14") == "2.10.0+cpu.bolt.1b371d14"
    assert wheelbolt.wheel_file_name("mindspore", "2.10.0+bolt.1b371d14", ["py3-none-any"]) \
        == "mindspore-2.10.0+bolt.1b371d14-py3-none-any.whl"
    assert wheelbolt.wheel_file_name("my-pkg", "1.0", ["py2-none-any", "py3-none-any"]) \
        == "my_pkg-1.0-py2.py3-none-any.whl"
    with pytest.raises(InputError, match="no Tag"):
        wheelbolt.wheel_file_name("x", "1", [])


def _installed(record: list[str]) -> wheelbolt.Installed:
    return wheelbolt.Installed("mindspore", "2.10.0", Path("/v/lib/python3.11/site-packages"),
                               "mindspore-2.10.0.dist-info", tuple(wheelbolt.RecordEntry(p, "", None) for p in record),
                               ("py3-none-any",), ("msrun",))


def test_wheel_members_leave_out_what_the_installer_wrote() -> None:
    inst = _installed(["mindspore/__init__.py", "mindspore/__pycache__/__init__.cpython-311.pyc",
                       "mindspore/lib/libmindspore_core.so", "mindspore-2.10.0.dist-info/METADATA",
                       "mindspore-2.10.0.dist-info/WHEEL", "mindspore-2.10.0.dist-info/INSTALLER",
                       "mindspore-2.10.0.dist-info/RECORD", "mindspore-2.10.0.dist-info/REQUESTED",
                       "../../../bin/msrun", "../../../bin/other-tool"])
    members, notes = wheelbolt.wheel_members(inst, "2.10.0+bolt.abcdef12")
    assert members == [("mindspore/__init__.py", "mindspore/__init__.py"),
                       ("mindspore/lib/libmindspore_core.so", "mindspore/lib/libmindspore_core.so"),
                       ("mindspore-2.10.0+bolt.abcdef12.dist-info/METADATA", "mindspore-2.10.0.dist-info/METADATA"),
                       ("mindspore-2.10.0+bolt.abcdef12.dist-info/WHEEL", "mindspore-2.10.0.dist-info/WHEEL"),
                       ("mindspore-2.10.0+bolt.abcdef12.data/scripts/other-tool", "../../../bin/other-tool")]
    assert len(notes) == 1 and "other-tool" in notes[0]


def test_metadata_version_is_rewritten_and_only_in_the_headers() -> None:
    text = "Metadata-Version: 2.1\nName: mindspore\nVersion: 2.10.0\n\nVersion: 2.10.0 in the body\n"
    assert wheelbolt.rewrite_metadata(text, "2.10.0+bolt.x") == \
        "Metadata-Version: 2.1\nName: mindspore\nVersion: 2.10.0+bolt.x\n\nVersion: 2.10.0 in the body\n"
    with pytest.raises(InputError, match="no Version"):
        wheelbolt.rewrite_metadata("Name: x\n\nVersion: 1\n", "1+bolt.x")


def test_library_selection_takes_globs_and_refuses_unknown_names() -> None:
    rec = [wheelbolt.RecordEntry(p, "", None) for p in
           ("mindspore/_c_expression.cpython-311-x86_64-linux-gnu.so", "mindspore/lib/libmindspore_core.so")]
    got = wheelbolt.select_libraries(rec, ["mindspore/lib/libmindspore_core.so", "mindspore/_c_expression*.so"])
    assert [e.path for e in got] == ["mindspore/lib/libmindspore_core.so",
                                     "mindspore/_c_expression.cpython-311-x86_64-linux-gnu.so"]
    with pytest.raises(InputError, match="libmindspore_nope.so"):
        wheelbolt.select_libraries(rec, ["mindspore/lib/libmindspore_nope.so"])


# ---------------------------------------------------------------------------------------------
# The plan.

def _inputs(tmp_path: Path, collector: str = "callgrind") -> wheelbolt.Inputs:
    inst = _installed(["mindspore/lib/libmindspore_core.so", "mindspore-2.10.0.dist-info/METADATA"])
    lib = wheelbolt.Library("mindspore/lib/libmindspore_core.so", inst.location / "mindspore/lib/libmindspore_core.so",
                            "ab" * 32, stripped=True, code_relocations=False)
    tools = wheelbolt.Tools("/usr/bin/llvm-bolt-22", "/usr/bin/perf2bolt-22", "/usr/bin/merge-fdata-22",
                            "/usr/bin/valgrind", (("llvm-bolt", "22.1.8"), ("valgrind", "valgrind-3.19.0")))
    return wheelbolt.Inputs(
        package="mindspore", python="/v/bin/python", installed=inst, libraries=(lib,),
        training=(wheelbolt.TrainingRun("decode-b1", ("workload", "decode-b1", "8")),),
        checks=(wheelbolt.Check("decode-b1 golden digest", ("-m", "runtime", "workload", "decode-b1", "--json",
                                                             "--check-golden")),),
        import_name="mindspore", stock=profile.load("baseline", environ={}).bolt_stock, collector=collector,
        collector_why="test", tools=tools, work_dir=tmp_path / "w", stamps=tmp_path / "s", logs=tmp_path / "l",
        profile_name="baseline", profile_digest="pd", training_digest="td")


def test_plan_stages_and_commands(tmp_path: Path) -> None:
    bp = wheelbolt.plan(_inputs(tmp_path))
    assert bp.build_id == "mindspore-2.10.0-baseline"
    assert [s.name for s in bp.stages] == ["wheelbolt-collect", "wheelbolt-convert", "wheelbolt-apply",
                                           "wheelbolt-pack", "wheelbolt-verify"]
    collect = next(a for a in bp.stages[0].actions if hasattr(a, "argv"))
    assert collect.argv[:6] == ("/usr/bin/valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=yes",
                                "--compress-strings=no", "--compress-pos=no")
    assert collect.argv[-5:] == ("--maps", str(tmp_path / "w/collect/decode-b1.maps.json"), "workload", "decode-b1",
                                 "8")
    assert "--callgrind" in collect.argv
    apply_text = bp.stages[2].actions[0].describe()
    assert "--allow-stripped -reorder-blocks=ext-tsp -split-functions -split-all-cold" in apply_text
    verify = [a.describe() for a in bp.stages[4].actions]
    assert any("--check-golden" in v and "PYTHONPATH=" + str(tmp_path / "w/verify/site") in v for v in verify)
    assert all(str(o).startswith(str(tmp_path / "w")) for s in bp.stages for o in s.outputs)  # never the install


def test_plan_keys_follow_their_inputs(tmp_path: Path) -> None:
    inp = _inputs(tmp_path)
    keys = [s.key for s in wheelbolt.plan(inp).stages]
    assert keys == [s.key for s in wheelbolt.plan(inp).stages]  # pure
    other_apply = dataclasses.replace(inp, stock=dataclasses.replace(inp.stock, apply=("-reorder-blocks=ext-tsp",)))
    k2 = [s.key for s in wheelbolt.plan(other_apply).stages]
    assert k2[:2] == keys[:2] and k2[2:] != keys[2:] and all(a != b for a, b in zip(k2[2:], keys[2:]))
    other_lib = dataclasses.replace(inp, libraries=(dataclasses.replace(inp.libraries[0], sha256="cd" * 32),))
    assert all(a != b for a, b in zip((s.key for s in wheelbolt.plan(other_lib).stages), keys))


def test_perf_collector_records_branch_stacks(tmp_path: Path) -> None:
    bp = wheelbolt.plan(_inputs(tmp_path, collector="perf"))
    collect = next(a for a in bp.stages[0].actions if hasattr(a, "argv"))
    assert collect.argv[:7] == ("perf", "record", "-q", "-e", "cycles:u", "-j", "any,u")
    assert "--callgrind" not in collect.argv and "valgrind" not in collect.argv[0]
    assert "merge-fdata" in bp.stages[1].actions[0].describe()


def test_manifest_validation_refuses_a_rewritten_library_without_digests() -> None:
    doc = {"schema": wheelbolt.MANIFEST_SCHEMA, "build_id": "b", "package": "p", "input": {}, "profile": {},
           "collector": {}, "apply": [], "libraries": [{"name": "x", "rewritten": True, "input_sha256": "a"}],
           "stages": {}, "written": "t"}
    with pytest.raises(Exception, match="lacks its input or output sha256"):
        wheelbolt.validate_manifest(doc)
    doc["libraries"][0]["output_sha256"] = "b"
    wheelbolt.validate_manifest(doc)


def test_bolt_check_names_the_non_relocation_route_for_a_stripped_library() -> None:
    facts = bolt.ElfFacts("/x/lib.so", "ELF64", "Advanced Micro Devices X86-64", "DYN",
                          sections=(bolt.Section(".text", "PROGBITS", 100),))
    v = bolt.assess(facts)
    assert not v.ok and v.route == "non-relocation"
    assert any("python -m buildsys bolt-wheel" in n for n in v.notes)
    bolted = dataclasses.replace(facts, sections=(*facts.sections, bolt.Section(bolt.BOLT_NOTE, "NOTE", 10)))
    assert bolt.assess(bolted).route == "none"


def test_driver_reads_load_bases_from_proc_maps() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("wheelbolt_driver", wheelbolt.DRIVER)
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    maps = ("7f10a0000000-7f10a0001000 r--p 00000000 fd:00 12 /site/hotpkg/libhot.so\n"
            "7f10a0001000-7f10a0002000 r-xp 00001000 fd:00 12 /site/hotpkg/libhot.so\n"
            "7f10b0000000-7f10b0021000 rw-p 00000000 00:00 0 [heap]\n"
            "7f10c0000000-7f10c0001000 r--p 00000000 fd:00 13 /usr/lib/python3.11/os.py\n"
            "7f10d0000000-7f10d0001000 r-xp 00000000 fd:00 14 /usr/lib/libffi.so.8.1.2\n")
    assert driver.mapped_objects(maps) == {"/site/hotpkg/libhot.so": 0x7F10A0000000,
                                           "/usr/lib/libffi.so.8.1.2": 0x7F10D0000000}


def test_driver_finds_the_checkout_in_an_interpreter_without_the_project_installed(tmp_path: Path) -> None:
    # The pipeline runs the driver with a venv of the optimized build, where hostpgo is not installed: the
    # driver's own path must lead to the checkout. `-S` leaves out site-packages (and the editable install).
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-S", str(wheelbolt.DRIVER), "loaded", "json"], cwd=tmp_path,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert isinstance(json.loads(out.stdout), list)


def test_a_package_with_its_own_workloads_trains_verifies_and_decides_on_them_only() -> None:
    profile_sets = {"training": ["decode-b1", "ray-decode"], "verify": ["decode-b1", "decode-b8"],
                    "decide": ("decode-b1", "serve-mixed")}
    ray = wheelbolt.workload_sets(["ray-decode"], **profile_sets)
    assert (ray.training, ray.verify, ray.decide) == (("ray-decode",),) * 3
    ms = wheelbolt.workload_sets(True, **profile_sets)
    assert ms == wheelbolt.WorkloadSets(("decode-b1", "ray-decode"), ("decode-b1", "decode-b8"),
                                        ("decode-b1", "serve-mixed"))
    assert wheelbolt.workload_sets(False, **profile_sets).verify == ()
    # MindSpore leaves out ray-decode, whose measured process (the driver) runs Ray while the actors run the model.
    assert wheelbolt.workload_sets(True, **profile_sets, exclude=["ray-decode"]).training == ("decode-b1",)
    assert wheelbolt.package_settings("mindspore")["exclude_workloads"] == ["ray-decode"]


@pytest.mark.parametrize("value", ["[]", "\"ray-decode\"", "[1]"])
def test_a_bad_package_workloads_value_names_the_file_and_key(tmp_path: Path, value: str) -> None:
    f = tmp_path / "wheelbolt.toml"
    f.write_text(f'[packages.ray]\nlibraries = ["ray/_raylet.so"]\nworkloads = {value}\n')
    with pytest.raises(SettingsError, match=r"wheelbolt.toml: \[packages.ray\] workloads = .*non-empty list"):
        wheelbolt.package_settings("ray", f)


def test_a_vendored_dist_info_is_a_file_of_the_package_not_the_wheels_own(tmp_path: Path) -> None:
    # Ray 2.60.0 ships ray/thirdparty_files/psutil-7.2.2.dist-info/{METADATA,RECORD,...} inside its tree.
    import zipfile

    own = "ray-2.60.0+bolt.15121524.dist-info"
    vendored = "ray/thirdparty_files/psutil-7.2.2.dist-info"
    members = {"ray/_raylet.so": b"\x7fELF", f"{vendored}/METADATA": b"Version: 7.2.2\n",
               f"{vendored}/RECORD": b"psutil/__init__.py,,\n", f"{own}/METADATA": b"Version: 2.60.0+bolt\n"}
    assert wheelbolt.own_dist_info(members) == own
    rows = "".join(f"{n},{wheelbolt.b64_sha256(d)},{len(d)}\n" for n, d in members.items()) + f"{own}/RECORD,,\n"
    wheel = tmp_path / "ray-2.60.0+bolt.15121524-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for n, d in {**members, f"{own}/RECORD": rows.encode()}.items():
            z.writestr(n, d)
    assert wheelbolt.check_wheel_record(wheel) == len(members) + 1
    with pytest.raises(HostpgoError, match="expected one top-level .dist-info directory, found none"):
        wheelbolt.own_dist_info([f"{vendored}/METADATA"])


def test_a_bad_exclude_workloads_value_names_the_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "wheelbolt.toml"
    f.write_text('[packages.mindspore]\nlibraries = ["x.so"]\nexclude_workloads = "ray-decode"\n')
    with pytest.raises(SettingsError, match=r"wheelbolt.toml: \[packages.mindspore\] exclude_workloads = 'ray-decode'"):
        wheelbolt.package_settings("mindspore", f)


def test_a_decision_perf_cannot_time_is_refused_before_anything_runs(tmp_path: Path) -> None:
    # prefix-hit is a runtime workload without a perf target: the decide stage would fail at its end. Ray's own
    # ray-decode has one (its venvs install the ray extra).
    from buildsys.pipeline import wheeldecide

    assert wheeldecide.untimeable(["decode-b1", "ray-decode", "prefix-hit", "op-dispatch"]) == ["prefix-hit"]
    args = wheelbolt.arguments(["--package", "ray", "--profile", "workload-pgo-lto-tcmalloc", "--interp",
                                str(tmp_path / "absent" / "python"), "--keep-if-faster",
                                "--decide-workloads", "ray-decode", "prefix-hit"])
    with pytest.raises(InputError, match="--keep-if-faster: the decision would time prefix-hit, which `python -m "
                                         "perf bench` has no target for"):
        wheelbolt.prepare(args, None, None)
