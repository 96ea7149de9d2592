"""The Ray executor: stage layout validation, split-model numerics, and (marker `ray`) one local cluster per module
running ray-decode and a mixed request stream with tokens identical to the local executor's, bound to 127.0.0.1,
every actor and Ray process gone after shutdown."""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.runtime
np = pytest.importorskip("numpy")
pytest.importorskip("mindspore")

from runtime import kernels as K  # noqa: E402
from runtime.config import PRESETS  # noqa: E402
from runtime.engine import EngineConfig, LLMEngine  # noqa: E402
from runtime.errors import EngineError  # noqa: E402
from runtime.executor import LocalExecutor  # noqa: E402
from runtime.model import DeepseekV3Model, contiguous_batch  # noqa: E402
from runtime.ray_executor import RayExecutor, RayExecutorConfig, plan_stages, ray_unavailable  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402
from runtime.scheduler import SchedulerConfig  # noqa: E402
from runtime.weights import load_weights, random_tensors  # noqa: E402

TINY = PRESETS["tiny"]
# decode-b8's pinned digest (tests/unit/test_runtime_workloads.py): ray-decode runs its requests
DECODE_B8 = "aeddfe7a7e338be551f1496cce47e3c1fdaef5c8daa5a4adca11e1a9cd3d47b4"


# -- layout and numerics, no Ray needed ------------------------------------------------------------------------


def test_default_split_and_explicit_ranges():
    assert plan_stages(RayExecutorConfig(), 3) == (range(0, 2), range(2, 3))
    assert plan_stages(RayExecutorConfig(num_stages=3, num_cpus=3), 8) == (range(0, 3), range(3, 6), range(6, 8))
    assert plan_stages(RayExecutorConfig(layer_ranges=((0, 1), (1, 3))), 3) == (range(0, 1), range(1, 3))


@pytest.mark.parametrize(
    "rc, message",
    [
        (RayExecutorConfig(layer_ranges=((0, 2), (1, 3))), r"ray.layer_ranges\[1\] = \(1, 3\) overlaps the previous"),
        (RayExecutorConfig(layer_ranges=((0, 1), (2, 3))), r"ray.layer_ranges\[1\] = \(2, 3\) leaves a gap"),
        (RayExecutorConfig(layer_ranges=((1, 3),)), r"ray.layer_ranges\[0\] = \(1, 3\) leaves a gap.*start at layer 0"),
        (RayExecutorConfig(layer_ranges=((0, 0), (0, 3))), r"ray.layer_ranges\[0\] = \(0, 0\) is empty"),
        (RayExecutorConfig(layer_ranges=((0, 2), (2, 4))), r"ray.layer_ranges\[1\] = \(2, 4\) runs past the model's 3"),
        (RayExecutorConfig(layer_ranges=((0, 1), (1, 2))), r"ray.layer_ranges \[\(0, 1\), \(1, 2\)\] stop at layer 2"),
        (RayExecutorConfig(layer_ranges=((0, 1, 2),)), r"ray.layer_ranges\[0\]: expected \(first, stop\)"),
        (RayExecutorConfig(num_stages=0), r"ray.num_stages must be in 1..3"),
        (RayExecutorConfig(num_stages=4, num_cpus=4), r"ray.num_stages must be in 1..3"),
        (RayExecutorConfig(num_stages=3), r"ray.num_cpus \(2\) must be at least the number of stages \(3\)"),
    ],
)
def test_bad_layouts_are_errors_naming_the_setting(rc, message):
    with pytest.raises(EngineError, match=message):
        plan_stages(rc, 3)
    # the executor checks before anything starts (no Ray needed to fail)
    with pytest.raises(EngineError, match=message):
        RayExecutor(TINY, {}, 64, rc)


def test_long_temp_dir_is_refused_before_ray_starts():
    with pytest.raises(EngineError, match="ray.temp_dir /tmp/x+ is 65 characters long"):
        RayExecutor(TINY, {}, 64, RayExecutorConfig(temp_dir="/tmp/" + "x" * 60))


def test_engine_config_executor_settings():
    with pytest.raises(EngineError, match="engine executor must be one of local, ray, got 'dask'"):
        EngineConfig(executor="dask")
    with pytest.raises(EngineError, match="executor 'ray' runs eager mode only, got mode 'graph'"):
        EngineConfig(executor="ray", mode="graph")
    model = DeepseekV3Model(TINY, random_tensors(TINY, 0, include_mtp=False), 64)
    with pytest.raises(EngineError, match="engine executor 'ray' needs the model build_model"):
        LLMEngine(model, EngineConfig(num_blocks=4, executor="ray"))


def test_stages_in_one_process_compute_the_same_floats():
    w = random_tensors(TINY, 0, include_mtp=False)
    tokens = np.arange(3, 40, dtype=np.int32)
    whole = K.to_host(DeepseekV3Model(TINY, w, 64).forward(contiguous_batch(tokens, 0)))
    first, last = (DeepseekV3Model(TINY, w, 64, layers=r) for r in (range(0, 1), range(1, 3)))
    assert set(first.caches) == {0} and set(last.caches) == {1, 2} and "lm_head.weight" not in first.w
    batch = contiguous_batch(tokens, 0)
    split = K.to_host(last.forward_stage(batch, K.to_host(first.forward_stage(batch, None))))
    assert np.array_equal(split, whole)
    with pytest.raises(EngineError, match="layers 1..2: needs the previous stage's hidden states"):
        last.forward_stage(batch, None)


# -- one local Ray cluster for the rest of the module ------------------------------------------------------------


def _descendants(root: int) -> set[int]:
    """Live processes below `root` (Ray's GCS, raylet, agents and workers below the test process)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parent[int(entry.name)] = int(fields[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    return found


_BEFORE_RAY: set[int] = set()
"""Processes below this one before the cluster started (other tests' children): not Ray's."""


def _ray_processes() -> set[int]:
    return _descendants(os.getpid()) - _BEFORE_RAY


def _alive(pids) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


@pytest.fixture(scope="module")
def ray_workload():
    """ray-decode opened once (a local cluster, two stage actors); shut down however the module's tests end."""
    message = ray_unavailable("tests/unit/test_runtime_ray.py")
    if message:
        pytest.skip(message)
    from runtime.workloads import open_workload

    home = tempfile.mkdtemp(prefix="hpr", dir="/tmp")  # short: Ray's Unix socket paths live below it
    old = os.environ.get("HOSTPGO_HOME")
    os.environ["HOSTPGO_HOME"] = home
    wl = None
    _BEFORE_RAY.update(_descendants(os.getpid()))
    try:
        wl = open_workload("ray-decode")
        yield wl
    finally:
        import ray

        if wl is not None:
            wl.shutdown()
        if ray.is_initialized():
            ray.shutdown()
        if old is None:
            del os.environ["HOSTPGO_HOME"]
        else:
            os.environ["HOSTPGO_HOME"] = old
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.ray
def test_ray_decode_tokens_equal_local_decode_b8(ray_workload):
    wl = ray_workload
    rec = wl.record(wl.run_steps(wl.spec.default_steps))
    assert rec["token_digest"] == DECODE_B8 == wl.spec.golden and rec["golden_match"] is True
    ex = rec["executor"]
    assert ex["kind"] == "ray" and ex["stages"] == [[0, 2], [2, 3]] and ex["actors"] == 2
    assert ex["node_ip"] == "127.0.0.1" and ex["owns_cluster"] is True and ex["ray"] == "2.60.0"
    assert ex["steps_executed"] == 32
    compute = ex["stage_compute_us_per_step"]
    assert len(compute) == 2 and all(c > 0 for c in compute)
    assert ex["round_trip_us_per_step"] > sum(compute)  # the remote calls cost something on top
    assert ex["overhead_us_per_step"] == pytest.approx(ex["round_trip_us_per_step"] - sum(compute))
    assert all(d > 50 for d in ex["stage_dispatches_per_step"])  # the operators ran in the actors
    # the forward phase is the round trip (plus from_numpy of the logits)
    assert rec["phases_us_per_step"]["forward"]["wall"] >= ex["round_trip_us_per_step"]


@pytest.mark.ray
def test_mixed_prefill_decode_sampling_and_preemption_match_local(ray_workload):
    executor = ray_workload.engine.executor
    weights, _ = load_weights(ray_workload.checkpoint, ray_workload.cfg)
    local = LocalExecutor(DeepseekV3Model(ray_workload.cfg, weights, executor.num_slots))
    # logits bit for bit on a fresh 37-token prompt (slots 0..36; engines below rewrite every slot they read)
    batch = contiguous_batch(np.arange(5, 42, dtype=np.int32), 0)
    assert np.array_equal(K.to_host(executor.execute_model(batch)), K.to_host(local.execute_model(batch)))

    def run(ex, kind):
        ec = EngineConfig(block_size=16, num_blocks=6, scheduler=SchedulerConfig(64, 4), seed=3, executor=kind)
        eng = LLMEngine(ex, ec)
        rng = np.random.default_rng(7)
        for i in range(6):
            prompt = [int(t) for t in rng.integers(0, TINY.vocab_size, 10 + 9 * i)]
            params = SamplingParams(max_tokens=6) if i % 2 else SamplingParams(
                temperature=0.8, top_k=30, top_p=0.9, max_tokens=6, seed=None if i == 4 else 100 + i)
            eng.add_request(f"x{i}", prompt, params)
        outs = eng.run_to_completion()
        eng.blocks.assert_no_leaks()
        assert any(o.metrics.prefill_tokens and o.metrics.decode_tokens for o in outs), "no mixed step"
        return {rid: r.output for rid, r in eng.requests.items()}, eng

    ray_tokens, ray_engine = run(executor, "ray")
    local_tokens, _ = run(local, "local")
    assert ray_tokens == local_tokens
    assert sum(r.num_preemptions for r in ray_engine.requests.values()) > 0, "6 blocks should force preemption"
    assert all(m.execute is not None for m in ray_engine.history if m.num_requests)


@pytest.mark.ray
def test_cluster_listens_on_loopback_only(ray_workload):
    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2)")
    ray_pids = _ray_processes()
    out = subprocess.run(["ss", "-ltnupH"], capture_output=True, text=True, check=True, timeout=30).stdout
    sockets = []
    for line in out.splitlines():
        fields = line.split()
        if any(f"pid={pid}," in line for pid in ray_pids):
            sockets.append(fields[4])  # Local Address:Port
    assert len(sockets) >= 3, f"expected the GCS, raylet and worker servers among {out}"
    hosts = {s.rsplit(":", 1)[0] for s in sockets}
    assert hosts <= {"127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"}, sockets


@pytest.mark.ray
def test_shutdown_kills_every_actor_and_ray_process(ray_workload):
    # last in the module: the fixture's executor is shut down here (its teardown's shutdown is then a no-op)
    import ray

    executor = ray_workload.engine.executor
    processes = _ray_processes()
    assert set(executor.pids) <= processes and len(executor.pids) == 2
    ray_workload.shutdown()
    assert executor.actors == [] and not ray.is_initialized()
    deadline = time.monotonic() + 20
    while _alive(processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(processes), f"still running: {_alive(processes)}"
    ray_workload.shutdown()  # idempotent


def test_offload_with_the_ray_executor_is_refused_naming_host_blocks():
    with pytest.raises(EngineError, match=r"host_blocks\) needs the local executor"):
        EngineConfig(host_blocks=4, executor="ray")
    assert EngineConfig(host_blocks=4).executor == "local"


def test_a_deep_work_area_falls_back_to_a_short_ray_directory(monkeypatch, tmp_path):
    from runtime import ray_executor

    deep = tmp_path / ("d" * 60)
    monkeypatch.setenv("HOSTPGO_HOME", str(deep))
    got = ray_executor.default_temp_dir()
    assert len(str(got)) <= ray_executor.MAX_TEMP_DIR and not str(got).startswith(str(deep))
    monkeypatch.setenv("HOSTPGO_HOME", "/w/.hostpgo")
    assert ray_executor.default_temp_dir() == Path("/w/.hostpgo/ray")
