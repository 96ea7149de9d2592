"""The Ray executor: the model's layers split into pipeline stages, one Ray actor each, on a local cluster.

`RayExecutor` starts a single-node Ray cluster bound to 127.0.0.1 (unless this process is already
connected to one), creates one `StageWorker` actor per stage, each holding a contiguous range of
layers (`DeepseekV3Model(layers=...)`) and that range's latent caches, and drives them once per
step as vLLM's Ray distributed executor drives its workers: the engine on the driver schedules and
prepares the step's inputs, `execute_model` calls stage 0 with them, passes its hidden states to
stage 1 (an ObjectRef argument: Ray hands the value on when it is ready), and so on, waits once for
the last stage's logits and each stage's timing (one `ray.get` per step), and the engine samples.
The block manager stays on the driver; each actor only writes the slots the step maps.

Every actor runs the same operators in the same order as the local model on the same float32
inputs, so the tokens are the local executor's (the ray-decode workload's digest equals
decode-b8's; tests/unit/test_runtime_ray.py checks logits bit for bit).

Ray is optional (`pip install ray==2.60.0`, or the `ray` extra); this module imports it only when an
executor is built, and says how to install it when it is missing (`ray_unavailable`).

The cluster: `ray.init(num_cpus=..., include_dashboard=False, local_mode=False,
_node_ip_address="127.0.0.1", _temp_dir=<work area>/ray, log_to_driver=False)`. Before Ray is
imported, this process's environment gets `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (Ray then resolves
the node address to the loopback address instead of the outgoing interface's, so every server it
starts listens on 127.0.0.1 only; checked after start-up), `RAY_USAGE_STATS_ENABLED=0`, and, unless
already set, `RAY_AUTH_MODE=token` with a random `RAY_AUTH_TOKEN` (token authentication stays on,
and Ray writes no token file under the home directory). `shutdown()` kills every actor and, when
the executor started the cluster, calls `ray.shutdown()`.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.config import DeepseekV3Config
from runtime.errors import EngineError
from runtime.executor import ExecuteTiming, Executor
from runtime.model import BatchInputs

RAY_REQUIREMENT = "ray==2.60.0"
LOOPBACK = "127.0.0.1"
# Ray adds "/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store" (up to 64 characters) to the temp dir for
# its Unix sockets, whose paths may not exceed 107 bytes.
MAX_TEMP_DIR = 43


@dataclass(frozen=True)
class RayExecutorConfig:
    """How the Ray executor lays out the model and the local cluster it starts (EngineConfig.ray)."""

    layer_ranges: tuple[tuple[int, int], ...] = ()
    """Each pipeline stage's layers as (first, stop), in order, together covering every layer once; empty: split
    the layers into `num_stages` contiguous ranges, the earlier stages one layer longer when they do not divide."""
    num_stages: int = 2
    """Stages (actors) when `layer_ranges` is empty."""
    num_cpus: int = 2
    """CPUs the local cluster offers (ray.init's num_cpus); each stage actor reserves one."""
    object_store_mb: int = 80
    """Size of the cluster's object store (Ray's minimum is 75 MB)."""
    temp_dir: str | None = None
    """Ray's session directory root; None: `$HOSTPGO_HOME/ray` (the work area). At most 43 characters, since Ray's
    Unix socket paths below it are limited to 107 bytes."""


def plan_stages(rc: RayExecutorConfig, num_layers: int) -> tuple[range, ...]:
    """The stages' layer ranges, or an EngineError naming the `ray.*` setting that is wrong."""
    if rc.layer_ranges:
        stages = []
        expected = 0
        for k, pair in enumerate(rc.layer_ranges):
            if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
                raise EngineError(f"ray.layer_ranges[{k}]: expected (first, stop) layer numbers, got {pair!r}")
            first, stop = pair
            if first != expected:
                what = "overlaps the previous stage" if first < expected else "leaves a gap after the previous stage"
                raise EngineError(
                    f"ray.layer_ranges[{k}] = ({first}, {stop}) {what}: it must start at layer {expected} "
                    f"(the ranges must cover layers 0..{num_layers - 1} in order, each once)"
                )
            if stop <= first:
                raise EngineError(f"ray.layer_ranges[{k}] = ({first}, {stop}) is empty: stop must exceed first")
            if stop > num_layers:
                raise EngineError(
                    f"ray.layer_ranges[{k}] = ({first}, {stop}) runs past the model's {num_layers} layers"
                )
            stages.append(range(first, stop))
            expected = stop
        if expected != num_layers:
            raise EngineError(
                f"ray.layer_ranges {[tuple(p) for p in rc.layer_ranges]} stop at layer {expected}: "
                f"the model has {num_layers} layers (0..{num_layers - 1}), and the last stage must end at {num_layers}"
            )
        ranges = tuple(stages)
    else:
        if not 1 <= rc.num_stages <= num_layers:
            raise EngineError(f"ray.num_stages must be in 1..{num_layers} (the model's layers), got {rc.num_stages}")
        base, extra = divmod(num_layers, rc.num_stages)
        bounds = [0]
        for k in range(rc.num_stages):
            bounds.append(bounds[-1] + base + (1 if k < extra else 0))
        ranges = tuple(range(a, b) for a, b in zip(bounds, bounds[1:]))
    if rc.num_cpus < len(ranges):
        raise EngineError(f"ray.num_cpus ({rc.num_cpus}) must be at least the number of stages ({len(ranges)}): "
                          f"each stage actor reserves one CPU")
    return ranges


def ray_unavailable(what: str) -> str | None:
    """None when Ray can be imported here, else the message that says how to install it (Ray is imported, after
    this process's environment is prepared for it)."""
    _prepare_environment()
    try:
        import ray  # noqa: F401
    except ImportError:
        return (f"{what} needs Ray, which is not installed in {sys.executable}: "
                f"pip install {RAY_REQUIREMENT} (or install hostpgo with the `ray` extra)")
    return None


def _prepare_environment() -> None:
    """Environment for a loopback-only, token-authenticated local cluster; must precede Ray's import."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def _import_ray():
    """Ray, imported after `_prepare_environment`; an EngineError saying how to install it when it is missing."""
    message = ray_unavailable("the Ray executor")
    if message:
        raise EngineError(message)
    import ray

    return ray


def default_temp_dir() -> Path:
    """`$HOSTPGO_HOME/ray`, or, where that path is too long for Ray's socket paths (a deep checkout), a
    per-user directory under the system's temporary directory."""
    import tempfile

    from runtime.workarea import home

    path = (home() / "ray").absolute()
    if len(str(path)) <= MAX_TEMP_DIR:
        return path
    return Path(tempfile.gettempdir()) / f"hostpgo-ray-{os.getuid()}"


class StageWorker:
    """One pipeline stage inside a Ray actor: a DeepseekV3Model of a layer range and its caches."""

    def __init__(self, cfg: DeepseekV3Config, weights: dict[str, np.ndarray], num_slots: int, first: int, stop: int):
        from runtime.model import DeepseekV3Model

        self.model = DeepseekV3Model(cfg, weights, num_slots, layers=range(first, stop))

    def pid(self) -> int:
        return os.getpid()

    def execute(self, batch: BatchInputs, hidden: np.ndarray | None):
        """(hidden states [T, hidden], or logits [S, vocab] on the last stage, as NumPy; (wall s, thread s,
        dispatches) of this call)."""
        from runtime import kernels as K

        t0, c0, d0 = time.perf_counter(), time.thread_time(), K.dispatches()
        out = K.to_host(self.model.forward_stage(batch, hidden))
        return out, (time.perf_counter() - t0, time.thread_time() - c0, K.dispatches() - d0)


class RayExecutor(Executor):
    """Pipeline-parallel stages on Ray actors, driven from this process once per step."""

    kind = "ray"

    def __init__(self, cfg: DeepseekV3Config, weights: dict[str, np.ndarray], num_slots: int,
                 rc: RayExecutorConfig = RayExecutorConfig()):
        from runtime.model import stage_tensors

        self.cfg, self.num_slots, self.rc = cfg, num_slots, rc
        self.stages = plan_stages(rc, cfg.num_hidden_layers)  # before anything starts
        temp_dir = Path(rc.temp_dir) if rc.temp_dir else default_temp_dir()
        temp_dir = temp_dir.absolute()
        if len(str(temp_dir)) > MAX_TEMP_DIR:
            raise EngineError(
                f"ray.temp_dir {temp_dir} is {len(str(temp_dir))} characters long: Ray's Unix socket paths below it "
                f"would exceed 107 bytes; use a path of at most {MAX_TEMP_DIR} characters (or a shorter HOSTPGO_HOME)"
            )
        ray = self._ray = _import_ray()
        self.actors: list = []
        self.pids: list[int] = []
        self.owns_cluster = not ray.is_initialized()
        self.node_ip = None
        self.startup_s = 0.0
        t0 = time.perf_counter()
        try:
            if self.owns_cluster:
                temp_dir.mkdir(parents=True, exist_ok=True)
                ctx = ray.init(
                    num_cpus=rc.num_cpus,
                    include_dashboard=False,
                    local_mode=False,
                    _node_ip_address=LOOPBACK,
                    _temp_dir=str(temp_dir),
                    object_store_memory=rc.object_store_mb * 1024 * 1024,
                    log_to_driver=False,
                    namespace="hostpgo-runtime",
                )
                self.node_ip = ctx.address_info["node_ip_address"]
                if self.node_ip != LOOPBACK:
                    raise EngineError(
                        f"the local Ray cluster came up on {self.node_ip}, not {LOOPBACK}: Ray was imported before "
                        f"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set, or the environment sets it otherwise"
                    )
            remote = ray.remote(num_cpus=1, max_restarts=0)(StageWorker)
            for r in self.stages:
                part = stage_tensors(cfg, weights, r)
                self.actors.append(remote.remote(cfg, part, num_slots, r.start, r.stop))
            self.pids = ray.get([a.pid.remote() for a in self.actors])  # every actor built (or its error raised)
        except BaseException:
            self.shutdown()
            raise
        self.startup_s = time.perf_counter() - t0

    def execute_model(self, batch: BatchInputs):
        from runtime import kernels as K

        ray = self._ray
        t0 = time.perf_counter()
        hidden = None
        timings = []
        for actor in self.actors:
            hidden, timing = actor.execute.options(num_returns=2).remote(batch, hidden)
            timings.append(timing)
        logits, *stage = ray.get([hidden, *timings])
        round_trip = time.perf_counter() - t0
        self.last_timing = ExecuteTiming(
            round_trip_s=round_trip,
            stage_wall_s=tuple(s[0] for s in stage),
            stage_thread_s=tuple(s[1] for s in stage),
            stage_dispatches=tuple(s[2] for s in stage),
        )
        return K.from_numpy(logits)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "parallelism": "pipeline",
            "stages": [[r.start, r.stop] for r in self.stages],
            "actors": len(self.actors),
            "num_cpus": self.rc.num_cpus,
            "node_ip": self.node_ip,
            "owns_cluster": self.owns_cluster,
            "startup_s": self.startup_s,
            "ray": self._ray.__version__,
        }

    def shutdown(self) -> None:
        ray = self._ray
        actors, self.actors = self.actors, []
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - an actor that already died is what we want
                pass
        if self.owns_cluster and ray.is_initialized():
            ray.shutdown()
