"""Named workloads: golden token digests on the tiny preset, the in-process API, the JSON CLI."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.runtime
pytest.importorskip("mindspore")

from runtime import hostpath  # noqa: E402
from runtime.workloads import RECORD_SCHEMA, WORKLOADS, kernel_level, open_workload  # noqa: E402

# sha256 of every generated "request:token" line for `python -m runtime workload NAME` (default
# steps, seed 0, built-in tiny preset). A rebuilt interpreter or library that changes any of
# them computes something different. Change only together with the workload's version.
GOLDEN = {
    ("decode-b1", 1): "bf0e1698978d621f1e616e758b261a532a266dd48891a39c440e9cb659e4df3a",
    ("decode-b8", 1): "aeddfe7a7e338be551f1496cce47e3c1fdaef5c8daa5a4adca11e1a9cd3d47b4",
    ("prefill", 1): "27f417b373d61a1147b10d79e19e2155764b06e419ffdecf7e7a652741413093",
    ("serve-mixed", 1): "0c622a949477030839ec5c992932cdbe1dace23278a060239ed63da57e5ae9c8",
    ("prefix-hit", 1): "59e843e0d3274a82e1140e8cfebf0628a75a3fcedf1cf80538c1a574dbf61e41",
    # graph mode: pinned from runs; on the tiny preset they equal their eager namesakes'
    ("decode-b1-graph", 1): "bf0e1698978d621f1e616e758b261a532a266dd48891a39c440e9cb659e4df3a",
    ("decode-b8-graph", 1): "aeddfe7a7e338be551f1496cce47e3c1fdaef5c8daa5a4adca11e1a9cd3d47b4",
    ("serve-mixed-graph", 1): "0c622a949477030839ec5c992932cdbe1dace23278a060239ed63da57e5ae9c8",
    # quantized weights (the tiny preset through `checkpoint --quant`): pinned from runs
    # W8A8's int8 kernels give different tokens per MindSpore kernel level (kernel_level()): one digest per CPU kind
    ("decode-b8-w8a8", 1): {
        "avx512": "549c85359b0050302b2621046f20df74018388628be8b7b2bb1debac81bfff0e",
        "avx2": "8969e840036ca74142bfdd64d4b24851b2f6772312188a1b56887a257e34d22a",
    },
    ("decode-b8-a16w4", 1): "52b660eeab42a75890b5fdc57f5622fd06d7a64bf1803c0b5015a3034b03bd42",
    ("decode-b8-w8a8-graph", 1): {
        "avx512": "549c85359b0050302b2621046f20df74018388628be8b7b2bb1debac81bfff0e",
        "avx2": "8969e840036ca74142bfdd64d4b24851b2f6772312188a1b56887a257e34d22a",
    },
    ("decode-b8-a16w4-graph", 1): "52b660eeab42a75890b5fdc57f5622fd06d7a64bf1803c0b5015a3034b03bd42",
    # KV-cache offload: pinned from a run; the same digest with offload off and with a cache that never evicts
    ("serve-offload", 1): "cc7f51a36832c923020308d08eef60c0c290c5146fd8e4de3a18bff96d30091c",
    # the Ray executor (run by tests/unit/test_runtime_ray.py, marker `ray`): pinned from a run, equal to decode-b8's
    ("ray-decode", 1): "aeddfe7a7e338be551f1496cce47e3c1fdaef5c8daa5a4adca11e1a9cd3d47b4",
}


def pinned(name: str, version: int) -> str | None:
    """The digest pinned for this machine: the one digest, or the one for this CPU's kernel level."""
    g = GOLDEN[(name, version)]
    return g.get(kernel_level()) if isinstance(g, dict) else g


# Workloads run here; those needing Ray run in test_runtime_ray.py, with one cluster for the module.
LOCAL = sorted(name for name, w in WORKLOADS.items() if not w.needs_ray)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostpgo-home")
    old = os.environ.get("HOSTPGO_HOME")
    os.environ["HOSTPGO_HOME"] = str(path)
    yield path
    if old is None:
        del os.environ["HOSTPGO_HOME"]
    else:
        os.environ["HOSTPGO_HOME"] = old


def test_every_workload_is_pinned():
    assert set(GOLDEN) == {(w.name, w.version) for w in WORKLOADS.values()}
    assert {(w.name, w.version): w.golden for w in WORKLOADS.values()} == GOLDEN  # the package pins the same
    assert GOLDEN[("ray-decode", 1)] == GOLDEN[("decode-b8", 1)]  # same requests, same numerics
    assert [w.name for w in WORKLOADS.values() if w.needs_ray] == ["ray-decode"]


@pytest.mark.parametrize("name", LOCAL)
def test_golden_digest_and_no_leaks(home, name):
    wl = open_workload(name)
    assert wl.preset == "tiny" and str(wl.checkpoint).startswith(str(home))
    run = wl.run_steps(wl.spec.default_steps)
    rec = wl.record(run)
    assert rec["schema"] == RECORD_SCHEMA and rec["name"] == name
    expected = pinned(name, wl.spec.version)
    if expected is None:
        pytest.skip(f"{name}: no digest pinned for this CPU's MindSpore kernel level {kernel_level()!r}")
    assert rec["token_digest"] == expected and rec["kernel_level"] == kernel_level()
    # the package carries the same pin, for `workload NAME --check-golden` in rebuilt interpreters
    assert rec["golden_digest"] == expected and rec["golden_match"] is True
    assert rec["tokens"] > 0 and rec["host_us_per_token"] > 0
    assert rec["host_total_us_per_token"] >= rec["host_us_per_token"] * 0.99  # process CPU includes the thread's
    assert set(rec["phases_us_per_step"]) == {"schedule", "prepare", "forward", "sample", "update"}
    assert rec["mode"] == wl.spec.engine.mode
    assert rec["executor"] == (None if wl.spec.needs_compile else {"kind": "local"})
    if wl.spec.engine.host_blocks:  # offload runs on the reference block manager, and says so
        assert rec["host_path"] == "python" and "host_blocks" in rec["host_path_reason"]
    else:
        assert rec["host_path"] == hostpath.selected().name == "cython"  # pip install -e . builds the extension
        assert rec["host_path_reason"].startswith("runtime._hostpath built at")
    if wl.spec.needs_compile:
        g = rec["graphs"]
        assert g["compiled"] == len(g["token_buckets"]) + 1 == len(g["compile_s_each"]) and g["compile_s"] > 0
        assert g["compiled_in_steps"] == 0  # every bucket compiled in warm-up
        assert rec["dispatches_per_step"] < 40  # one graph launch plus the sampler's operators
    else:
        assert rec["graphs"] is None and rec["dispatches_per_token"] > 1
    wl.close()


@pytest.mark.parametrize("name", ["decode-b8", "serve-mixed"])
def test_reference_host_path_keeps_the_golden_digest(home, name, monkeypatch):
    """The pure-Python host path (what HOSTPGO_RUNTIME_REFERENCE=1 selects) produces the same tokens."""
    monkeypatch.setattr(hostpath, "selected", lambda: hostpath.select({hostpath.FORCE_REFERENCE_ENV: "1"}))
    wl = open_workload(name)
    rec = wl.record(wl.run_steps(wl.spec.default_steps))
    assert rec["host_path"] == "python" and hostpath.FORCE_REFERENCE_ENV in rec["host_path_reason"]
    assert rec["token_digest"] == pinned(name, wl.spec.version) and rec["golden_match"] is True
    wl.close()


def test_decode_batch_stays_full_across_restarts(home):
    wl = open_workload("decode-b8")
    for _ in range(3):  # requests 0, 1, 4, 5 (40 and 44 tokens) finish and restart
        r = wl.run_steps(15)
        assert r["tokens"] == r["generated_tokens"] == 120
    assert all(m.decode_tokens + m.prefill_tokens == 8 for m in wl.engine.history[2:])
    assert wl.engine.blocks.stats.hit_tokens >= 4 * 32  # restarts served their prompts from cache
    wl.close()


@pytest.mark.parametrize("name", ["prefill", "decode-b1"])
def test_long_runs_outlive_the_engine_forgetting_finished_requests(home, name):
    # The engine drops finished requests every 64 steps; a driver must treat a forgotten request
    # as finished (training runs 160 steps, pyperf many more).
    wl = open_workload(name)
    assert wl.run_steps(70)["tokens"] > 0 and wl.run_steps(70)["tokens"] > 0
    wl.close()


def test_run_steps_is_deterministic_and_dispatch_loop_counts(home):
    a = open_workload("decode-b1").run_steps(5)
    wl = open_workload("decode-b1")
    b = wl.run_steps(5)
    assert a["digest"] == b["digest"] and a["dispatches"] == b["dispatches"]
    assert wl.run_steps(5)["digest"] != b["digest"]  # the stream moves on
    d = wl.dispatch_loop(50)
    assert d["dispatches"] == 50 and d["wall_s"] > 0


def test_unknown_workload(home):
    from runtime.errors import WorkloadError

    with pytest.raises(WorkloadError, match="unknown workload 'decode-b3'"):
        open_workload("decode-b3")


def test_cli_workload_json_in_a_fresh_interpreter(home):
    env = {**os.environ, "HOSTPGO_HOME": str(home)}
    cmd = [sys.executable, "-m", "runtime.workload", "decode-b1", "--steps", "4", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["token_digest"] == open_workload("decode-b1").run_steps(4)["digest"]
    for key in ("name", "version", "tokens", "wall_us_per_token", "host_us_per_token", "dispatches_per_token"):
        assert key in rec
    assert rec["host_path"] == "cython"
    # the environment variable forces the pure-Python reference; the tokens stay the same
    p = subprocess.run(cmd, capture_output=True, text=True, env={**env, "HOSTPGO_RUNTIME_REFERENCE": "1"}, timeout=300)
    assert p.returncode == 0, p.stderr
    forced = json.loads(p.stdout)
    assert forced["host_path"] == "python" and "HOSTPGO_RUNTIME_REFERENCE=1" in forced["host_path_reason"]
    assert forced["token_digest"] == rec["token_digest"]


def test_cli_check_golden(home, capsys, monkeypatch):
    from runtime import workloads
    from runtime.cli import main

    assert main(["workload", "decode-b1", "--steps", "3", "--check-golden"]) == 2  # not the pinned length
    assert "pinned for the built-in tiny preset" in capsys.readouterr().err
    spec = workloads.WORKLOADS["prefill"]
    monkeypatch.setitem(workloads.WORKLOADS, "prefill", workloads.replace(spec, default_steps=2))
    assert main(["workload", "prefill", "--check-golden"]) == 1  # a 2-step run cannot match the 24-step pin
    assert "!= golden" in capsys.readouterr().err
    # a workload pinned per kernel level, on a CPU whose level has no digest: named, with this run's digest
    monkeypatch.setitem(workloads.WORKLOADS, "prefill",
                        workloads.replace(spec, default_steps=2, golden={"avx512": "0" * 64}))
    monkeypatch.setattr(workloads, "kernel_level", lambda: "sse4_1")
    assert main(["workload", "prefill", "--check-golden"]) == 1
    err = capsys.readouterr().err
    assert "no token digest is pinned for this CPU's MindSpore kernel level 'sse4_1' (pinned: avx512)" in err
    assert "This run's digest is " in err


@pytest.mark.parametrize(("flags", "machine", "level"), [
    ("fpu sse4_1 sse4_2 avx fma f16c", "x86_64", "sse4_1"),  # AVX without AVX2: nnacl's SSE kernels
    ("sse4_1 avx avx2 fma", "x86_64", "avx2"),
    ("sse4_1 avx2 avx512f avx512bw", "x86_64", "avx512"),
    ("sse2", "x86_64", "generic"),
    ("fp asimd", "aarch64", "aarch64"),
])
def test_kernel_level_from_cpu_flags(tmp_path, flags, machine, level):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert kernel_level(cpuinfo, machine) == level


def test_golden_for_a_level():
    w8a8 = WORKLOADS["decode-b8-w8a8"]
    assert w8a8.golden_for("avx2") != w8a8.golden_for("avx512") and w8a8.golden_for("sse4_1") is None
    assert WORKLOADS["decode-b1"].golden_for("avx2") == WORKLOADS["decode-b1"].golden_for("sse4_1")


def test_cli_list(home, capsys):
    from runtime.cli import main

    assert main(["workload", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(f"{w.name} " in out and f"v{w.version}" in out for w in WORKLOADS.values())
    graph_lines = [line for line in out.splitlines() if "compiles" in line]
    assert [line.split()[0] for line in graph_lines] == [w.name for w in WORKLOADS.values() if w.needs_compile]
    assert "decode-b1-graph" in out and "compiles 3 graphs in warm-up: token buckets 1, 64 and the sampler" in out
    ray_lines = [line for line in out.splitlines() if "needs Ray" in line]
    assert [line.split()[0] for line in ray_lines] == ["ray-decode"]
    assert "[needs Ray: pip install ray==2.60.0; starts a local cluster]" in ray_lines[0]


def test_ray_decode_without_ray_says_how_to_install_it(home, capsys, monkeypatch):
    from runtime.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    assert main(["workload", "ray-decode", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "error: workload ray-decode needs Ray, which is not installed" in err and "pip install ray==2.60.0" in err


def test_cli_checkpoint_verify_generate(home, tmp_path, capsys):
    import numpy as np

    from runtime.cli import main

    ck = tmp_path / "ck"
    assert main(["checkpoint", "--out", str(ck), "--shards", "2", "--layout", "parameters", "--seed", "5"]) == 0
    assert main(["verify", "--checkpoint", str(ck), "--prompt-len", "20", "--decode", "2"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "set aside" in out
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(ck),
                "--prompt-ids",
                "1,2,3",
                "--max-tokens",
                "3",
                "--json",
                "--logits-out",
                str(tmp_path / "l.npy"),
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    logits = np.load(tmp_path / "l.npy")
    assert logits.shape == (3, 512) and result["output_ids"][0] == int(np.argmax(logits[-1]))
    (ck / "model-00002-of-00002.safetensors").unlink()
    assert main(["verify", "--checkpoint", str(ck)]) == 2
    assert "model-00002-of-00002.safetensors, which does not exist" in capsys.readouterr().err


def test_offload_gives_the_same_tokens_and_counts_swaps(home):
    from dataclasses import replace

    from runtime import workloads
    from runtime.engine import EngineConfig
    from runtime.errors import EngineError
    from runtime.workarea import builtin_checkpoint

    spec = workloads.WORKLOADS["serve-offload"]
    runs = {}
    for label, engine in (
        ("offload", spec.engine),
        ("recompute", replace(spec.engine, host_blocks=0)),
        ("no eviction", replace(spec.engine, num_blocks=64, host_blocks=0)),
    ):
        wl = workloads.Workload(replace(spec, engine=engine), builtin_checkpoint("tiny", 0), 0, "tiny")
        run = wl.run_steps(spec.default_steps)
        runs[label] = (run["digest"], run["tokens"], wl.record(run)["kv_offload"], wl.engine.blocks.stats.evictions)
        wl.drain()  # every request finished: no device block held, every host slot accounted for, no copy pending
        if engine.host_blocks:  # (the compiled block manager, which runs without offload, has no host tier)
            assert len(wl.engine.blocks.host_cached) + len(wl.engine.blocks.host_free) == engine.host_blocks
    digest, tokens, offload, evictions = runs["offload"]
    assert digest == runs["recompute"][0] == runs["no eviction"][0] == spec.golden
    assert offload["swaps_out"] == evictions > 0 and offload["swaps_in"] > 0 and offload["host_blocks"] == 32
    assert tokens == runs["no eviction"][1] < runs["recompute"][1]  # prefixes came back instead of being recomputed
    assert runs["recompute"][2] is None and runs["recompute"][3] > 0
    with pytest.raises(EngineError, match="eager mode only"):
        EngineConfig(mode="graph", host_blocks=4)
