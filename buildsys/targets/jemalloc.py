"""The jemalloc recipe: a library preloaded into the interpreter, planned by buildsys.pipeline.preloaded."""

from __future__ import annotations

from ..pipeline.preloaded import Inputs, plan, prepare

__all__ = ["Inputs", "prepare", "plan"]
