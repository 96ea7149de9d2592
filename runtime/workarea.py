"""The runtime's corner of the hostpgo work area: built-in checkpoints generated on demand.

`$HOSTPGO_HOME/runtime/checkpoints/<preset>-seed<N>-w<FORMAT>/` (HOSTPGO_HOME defaults to
`.hostpgo/` under the current directory). A checkpoint is generated into a temporary sibling and
renamed into place, so a half-written one is never used, and concurrent first runs are safe.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from runtime.config import PRESETS
from runtime.errors import WorkloadError
from runtime.weights import random_tensors, write_checkpoint

# Bump when random_tensors/write_checkpoint (or, for the quantized ones, quant_linear.quantize_checkpoint) change
# what a preset's files contain.
CHECKPOINT_FORMAT = 1
_COMPLETE = "hostpgo-complete"


def home() -> Path:
    env = os.environ.get("HOSTPGO_HOME")
    return Path(env) if env else Path.cwd() / ".hostpgo"


def builtin_checkpoint(preset: str = "tiny", seed: int = 0, quant: str | None = None) -> Path:
    """Path of the preset's checkpoint, generating it first if it is not there yet.

    With `quant` (runtime/quant.py METHODS) the float weights are quantized into that layout
    (`<preset>-seed<N>-w<FORMAT>-<quant>/`).
    """
    if preset not in PRESETS:
        raise WorkloadError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    suffix = f"-{quant}" if quant else ""
    final = home() / "runtime" / "checkpoints" / f"{preset}-seed{seed}-w{CHECKPOINT_FORMAT}{suffix}"
    if (final / _COMPLETE).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        cfg = PRESETS[preset]
        tensors = random_tensors(cfg, seed)
        if quant:
            from runtime.quant_linear import quantize_checkpoint

            cfg, tensors = quantize_checkpoint(cfg, tensors, quant, seed)
        write_checkpoint(tmp, cfg, tensors)
        (tmp / _COMPLETE).write_text("")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / _COMPLETE).exists():  # a stale incomplete directory: replace it
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
