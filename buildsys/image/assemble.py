"""Assembling the layout: each step runs on one rootfs, what it changed becomes its own layer, and the config,
manifest and index are written over those layers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import layers as layers_mod
from . import oci
from .layers import LayerBlob


@dataclass(frozen=True)
class LayerStep:
    """One step of the assembly; its changes to the rootfs are one layer."""

    name: str
    """The layer's name (`base`, `python`, `venv`, `runtime`)."""
    comment: str
    """The history comment: what the step adds."""
    apply: Callable[[Path], None]
    """Changes the rootfs (given as its path); runs commands through the stage's runner."""


def assemble_layout(rootfs: Path, layout: Path, steps: Sequence[LayerStep], *, epoch: int, tag: str,
                    config: Callable[[Sequence[LayerBlob]], dict[str, Any]]) -> oci.ImageDigests:
    """Run the steps in order on `rootfs` (empty or absent at first), one layer each, then write the layout
    at `layout` tagged `tag`; `config` makes the image config from the finished layers."""
    blobs = oci.init_layout(layout)
    rootfs.mkdir(parents=True, exist_ok=True)
    before = layers_mod.snapshot(rootfs)
    done: list[LayerBlob] = []
    for step in steps:
        step.apply(rootfs)
        blob, before = layers_mod.commit_layer(rootfs, before, blobs, epoch, name=step.name, comment=step.comment)
        done.append(blob)
    return oci.write_image(layout, done, config(done), tag)
