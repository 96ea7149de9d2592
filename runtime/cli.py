"""Command line of the runtime: `python -m runtime {checkpoint,verify,generate,workload} ...`.

Library code raises RuntimeErrorBase subclasses; only `main` turns them into messages and exit codes
(0 ok, 1 verification failed, 2 bad input).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hostpgo.errors import HostpgoError


def _ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids, got {text!r}") from None


def _at_least(minimum: int):
    """argparse type: an integer >= minimum, so a negative count or a zero budget is refused naming its flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
        return value

    return parse


def _float_in(low: float, high: float | None = None, *, low_open: bool = False):
    """argparse type: a number in [low, high] (or (low, high] with low_open)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = (value > low if low_open else value >= low) and (high is None or value <= high)  # NaN: False
        if not inside:
            bounds = f"{'(' if low_open else '['}{low}, {high}]" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be in {bounds}, got {text}")
        return value

    return parse


def cmd_checkpoint(args) -> int:
    from runtime.config import PRESETS
    from runtime.weights import random_tensors, write_checkpoint

    cfg = PRESETS[args.preset]
    if args.quantize_from:
        cfg, tensors = _float_checkpoint(args.quantize_from, args.quant)
    else:
        tensors = random_tensors(cfg, args.seed, include_mtp=not args.no_mtp)
    if args.quant:
        cfg, tensors = _quantize(cfg, tensors, args)
    files = write_checkpoint(
        args.out,
        cfg,
        tensors,
        shards=args.shards,
        layout=args.layout,
        replace=args.force,
    )
    for f in files:
        print(f)
    return 0


def _float_checkpoint(path: Path, quant: str | None):
    """`checkpoint --quant Q --from DIR`: the config and main-model tensors of a float checkpoint to quantize."""
    from runtime.config import load_config
    from runtime.errors import CheckpointError
    from runtime.weights import load_weights

    if not quant:
        raise CheckpointError("--from needs --quant (it quantizes an existing float checkpoint)")
    cfg = load_config(path)
    if cfg.quant is not None:
        raise CheckpointError(f"{path}: already {cfg.quant.method}-quantized; --from takes a float checkpoint")
    return cfg, load_weights(path, cfg)[0]


def _quantize(cfg, tensors, args):
    """`checkpoint --quant`: the float tensors rounded to nearest in the scheme's layout (runtime/quant.py)."""
    from runtime.quant_linear import quantize_checkpoint

    return quantize_checkpoint(cfg, tensors, args.quant, args.seed)


def cmd_verify(args) -> int:
    from runtime.verify import verify_checkpoint

    ok, lines = verify_checkpoint(
        args.checkpoint, prompt_len=args.prompt_len, decode=args.decode, chunk=args.chunk, seed=args.seed
    )
    for line in lines:
        print(line)
    return 0 if ok else 1


def cmd_generate(args) -> int:
    import numpy as np

    from runtime import kernels as K
    from runtime.config import load_config
    from runtime.engine import EngineConfig, LLMEngine
    from runtime.model import DeepseekV3Model, contiguous_batch
    from runtime.sampling import SamplingParams
    from runtime.scheduler import SchedulerConfig
    from runtime.weights import load_weights
    from runtime.workarea import builtin_checkpoint

    if args.logits_out:
        _check_new_file(args.logits_out, "--logits-out", args.force)
    ckpt = Path(args.checkpoint) if args.checkpoint else builtin_checkpoint("tiny", 0)
    cfg = load_config(ckpt)
    _check_generate_ids(args, cfg, ckpt)
    params = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        max_tokens=args.max_tokens,
        stop_token_ids=tuple(args.stop_ids),
    )
    weights, report = load_weights(ckpt, cfg)
    prompt = args.prompt_ids
    block = 16
    blocks = -(-(len(prompt) + args.max_tokens) // block) + 1
    model = DeepseekV3Model(cfg, weights, blocks * block)
    if args.logits_out:
        prompt_logits = K.to_host(model.forward(contiguous_batch(np.asarray(prompt), 0)))
        with open(args.logits_out, "wb" if args.force else "xb") as f:  # exactly this path (np.save adds .npy)
            np.save(f, prompt_logits)
    engine = LLMEngine(
        model,
        EngineConfig(
            block_size=block, num_blocks=blocks, scheduler=SchedulerConfig(max_num_batched_tokens=args.budget)
        ),
    )
    req = engine.add_request("0", prompt, params)
    engine.run_to_completion()
    engine.blocks.assert_no_leaks()
    result = {
        "checkpoint": str(ckpt),
        "prompt_ids": prompt,
        "output_ids": req.output,
        "finish_reason": req.finish_reason,
        "steps": engine.step_count,
        "dispatches": sum(m.dispatches for m in engine.history),
        "ttft_ms": 1e3 * req.ttft,
        "tpot_ms": None if req.tpot is None else 1e3 * req.tpot,
        "load": report.summary(),
    }
    if args.logits_out:
        result["logits_out"] = str(args.logits_out)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(report.summary(), file=sys.stderr)
        print(",".join(map(str, req.output)))
    return 0


def _check_new_file(path: Path, flag: str, force: bool) -> None:
    """Refuse, before any work, an output path that cannot be written or would silently replace a file."""
    from runtime.errors import EngineError

    if path.is_dir():
        raise EngineError(f"{flag} {path}: is a directory; give a file path")
    if not path.parent.is_dir():
        raise EngineError(f"{flag} {path}: directory {path.parent} does not exist; create it first")
    if path.exists() and not force:
        raise EngineError(f"{flag} {path}: already exists; choose another path, or pass --force to replace it")


def _check_generate_ids(args, cfg, ckpt: Path) -> None:
    """Check the token ids against the checkpoint's config before the model is built or run."""
    from runtime.errors import EngineError

    prompt = args.prompt_ids
    if not prompt:
        raise EngineError("--prompt-ids: no token ids given")
    vocab = f"the vocabulary of {ckpt / 'config.json'} (vocab_size {cfg.vocab_size}: ids 0..{cfg.vocab_size - 1})"
    for flag, ids in (("--prompt-ids", prompt), ("--stop-ids", args.stop_ids)):
        bad = [t for t in ids if not 0 <= t < cfg.vocab_size]
        if bad:
            raise EngineError(f"{flag}: token id {bad[0]} is outside {vocab}")
    if len(prompt) + args.max_tokens > cfg.max_position_embeddings:
        raise EngineError(
            f"--prompt-ids ({len(prompt)} ids) + --max-tokens ({args.max_tokens}) exceeds max_position_embeddings "
            f"({cfg.max_position_embeddings}) of {ckpt / 'config.json'}: shorten the prompt or lower --max-tokens"
        )


def cmd_workload(args) -> int:
    from runtime.errors import WorkloadError
    from runtime.workloads import WORKLOADS, get_spec, open_workload

    if args.host_settings or args.host_set:
        _enter_host_settings(args)
    if args.list or not args.name:
        for spec in WORKLOADS.values():
            print(spec.describe())
        if args.list:
            return 0
        print("error: workload: give a workload NAME (one of the above) or --list", file=sys.stderr)
        return 2
    spec = get_spec(args.name)
    steps = args.steps if args.steps is not None else spec.default_steps
    wl = open_workload(args.name, checkpoint=args.checkpoint, seed=args.seed, preset=args.preset)
    try:  # the Ray executor's actors and cluster stop however the run ends
        if args.check_golden and not wl.golden_applies(steps):
            raise WorkloadError(
                "--check-golden: digests are pinned for the built-in tiny preset, seed 0, "
                f"{spec.default_steps} steps only"
            )
        rec = wl.record(wl.run_steps(steps))
    finally:
        wl.shutdown()
    if args.json:
        print(json.dumps(rec, indent=2))
    else:
        print(
            f"{rec['name']} v{rec['version']}: {rec['steps']} steps, {rec['tokens']} tokens "
            f"({rec['generated_tokens']} generated), {rec['tokens_per_s']:.1f} tokens/s, "
            f"host {rec['host_us_per_token']:.0f} us/token, {rec['dispatches_per_token']:.1f} dispatches/token\n"
            f"token digest {rec['token_digest']}"
            + (
                ""
                if rec["golden_match"] is None
                else f" ({'matches' if rec['golden_match'] else 'DIFFERS FROM'} golden)"
            )
        )
    if args.check_golden and rec["golden_digest"] is None:
        print(  # only a per-level pin (a dict) can lack this CPU's level
            f"error: {rec['name']}: --check-golden: no token digest is pinned for this CPU's MindSpore kernel level "
            f"{rec['kernel_level']!r} (pinned: {', '.join(sorted(spec.golden))}); its int8 kernels compute "
            "differently per level. "
            f"This run's digest is {rec['token_digest']}: pin it in runtime/workloads.py once the stock stack "
            "(e.g. /usr/bin/python3.11 with the stock wheels) gives the same",
            file=sys.stderr,
        )
        return 1
    if args.check_golden and not rec["golden_match"]:
        print(
            f"error: {rec['name']}: token digest {rec['token_digest']} != golden {rec['golden_digest']}",
            file=sys.stderr,
        )
        return 1
    return 0


def _enter_host_settings(args) -> None:
    """Run under --host-settings: re-execute this command with the settings' environment unless already in it.

    The allocator preload, its tunables and the start-up options (-X frozen_modules, PYTHONNODEBUGRANGES) only
    take effect in a new process; the MindSpore and GC half is applied by the runtime from HOSTPGO_HOST_SETTINGS,
    which the re-executed process carries.
    """
    import os

    import hostenv

    settings = hostenv.resolve(args.host_settings, args.host_set, set_flag="--host-set")
    delta = hostenv.process_env(settings)
    if os.environ.get(hostenv.ENV_SETTINGS) == delta[hostenv.ENV_SETTINGS]:
        return
    env = dict(os.environ)
    env.update(delta)
    cmd = [sys.executable, *hostenv.interpreter_args(settings), "-m", "runtime", *args.argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime", description="hostpgo's DeepSeek-V3 runtime on MindSpore (CPU)"
    )
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("checkpoint", help="write a random checkpoint (config.json + safetensors, HF names)")
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--preset", choices=["tiny", "small"], default="tiny")
    c.add_argument("--seed", type=_at_least(0), default=0)
    c.add_argument(
        "--shards", type=_at_least(1), default=1, help="split into N files with model.safetensors.index.json"
    )
    c.add_argument(
        "--layout",
        choices=["published", "parameters"],
        default="published",
        help="config.json rotary keys: rope_theta/rope_scaling or rope_parameters/rope_interleave",
    )
    c.add_argument("--no-mtp", action="store_true", help="leave out the multi-token-prediction layer")
    c.add_argument("--force", action="store_true", help="replace a checkpoint already in --out (else refused)")
    c.add_argument(
        "--quant",
        choices=["w8a8", "a16w4", "fp8"],
        help="quantize the linears (round to nearest): w8a8 in golden-stick's layout, a16w4 in GPTQ's "
        "(group 64), fp8 in DeepSeek's 128x128-block E4M3 layout",
    )
    c.add_argument(
        "--from",
        dest="quantize_from",
        type=Path,
        metavar="DIR",
        help="with --quant: quantize this float checkpoint (its main-model tensors; --preset, --seed's weights "
        "and --no-mtp do not apply) instead of new random weights",
    )
    c.set_defaults(func=cmd_checkpoint)

    v = sub.add_parser("verify", help="MindSpore forward vs the NumPy reference on the same tokens")
    v.add_argument("--checkpoint", required=True, type=Path)
    v.add_argument("--prompt-len", type=_at_least(1), default=40)
    v.add_argument("--chunk", type=_at_least(1), default=16, help="prefill chunk size")
    v.add_argument("--decode", type=_at_least(0), default=6, help="decode steps checked after the prompt")
    v.add_argument("--seed", type=_at_least(0), default=0)
    v.set_defaults(func=cmd_verify)

    g = sub.add_parser("generate", help="generate from token ids")
    g.add_argument("--checkpoint", type=Path, help="default: the built-in tiny preset")
    g.add_argument("--prompt-ids", type=_ids, required=True)
    g.add_argument("--max-tokens", type=_at_least(1), default=16)
    g.add_argument("--temperature", type=_float_in(0.0), default=0.0, help="0: greedy")
    g.add_argument("--top-k", type=_at_least(0), default=0, help="0: off")
    g.add_argument("--top-p", type=_float_in(0.0, 1.0, low_open=True), default=1.0, help="1.0: off")
    g.add_argument("--seed", type=_at_least(0))
    g.add_argument("--stop-ids", type=_ids, default=[])
    g.add_argument("--budget", type=_at_least(1), default=64, help="token budget per engine step")
    g.add_argument("--logits-out", type=Path, help="save the prompt's logits [len, vocab] as .npy, to this path")
    g.add_argument("--force", action="store_true", help="replace an existing --logits-out file (else refused)")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_generate)

    w = sub.add_parser("workload", help="run a named host-dispatch workload")
    w.add_argument("name", nargs="?")
    w.add_argument("--list", action="store_true")
    w.add_argument("--checkpoint", type=Path, help="default: the --preset checkpoint generated into $HOSTPGO_HOME")
    w.add_argument(
        "--preset", choices=["tiny", "small"], default="tiny", help="built-in checkpoint (digests pinned: tiny)"
    )
    w.add_argument("--steps", type=_at_least(1), help="default: the workload's own (see --list)")
    w.add_argument("--seed", type=_at_least(0), default=0)
    w.add_argument("--json", action="store_true")
    w.add_argument("--check-golden", action="store_true", help="exit 1 unless the token digest equals the pinned one")
    w.add_argument(
        "--host-settings",
        metavar="NAME|PATH",
        help="run under host settings (profiles/host/NAME.toml or a path): allocator preload and tunables "
        "(the command re-executes itself with them), MindSpore launch/threads/affinity, GC policy",
    )
    w.add_argument("--host-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one host setting (implies --host-settings default); repeat")
    w.set_defaults(func=cmd_workload)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except HostpgoError as e:  # the runtime's own errors and hostenv's host-settings errors
        print(f"error: {e}", file=sys.stderr)
        return 2
