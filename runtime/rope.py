"""Rotary position tables for the decoupled RoPE part of MLA (plain RoPE and DeepSeek's YaRN), in NumPy.

Both the MindSpore model and the NumPy reference take their cos/sin tables from here, so the
tables themselves are checked separately (tests/unit/test_runtime_rope.py) against closed forms.
"""

from __future__ import annotations

import math

import numpy as np

from runtime.config import RopeConfig, yarn_get_mscale


def _correction_dim(num_rotations: float, dim: int, base: float, max_pos: int) -> float:
    """The rotary dimension index whose wavelength fits `num_rotations` turns into `max_pos` tokens."""
    return (dim * math.log(max_pos / (num_rotations * 2 * math.pi))) / (2 * math.log(base))


def yarn_correction_range(rope: RopeConfig, dim: int) -> tuple[int, int]:
    low = math.floor(_correction_dim(rope.beta_fast, dim, rope.theta, rope.original_max_position_embeddings))
    high = math.ceil(_correction_dim(rope.beta_slow, dim, rope.theta, rope.original_max_position_embeddings))
    return max(low, 0), min(high, dim - 1)


def inverse_frequencies(rope: RopeConfig, dim: int) -> np.ndarray:
    """Per-pair inverse frequencies (dim // 2 of them), YaRN-blended when rope_type is yarn."""
    exponents = np.arange(0, dim, 2, dtype=np.float64) / dim
    extrapolated = 1.0 / (rope.theta**exponents)
    if rope.rope_type != "yarn":
        return extrapolated
    interpolated = extrapolated / rope.factor
    low, high = yarn_correction_range(rope, dim)
    span = (high - low) if high != low else 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / span, 0.0, 1.0)
    keep = 1.0 - ramp  # 1 where the trained (high-frequency) rotation is kept
    return interpolated * (1.0 - keep) + extrapolated * keep


def cos_sin_tables(rope: RopeConfig, dim: int, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 cos and sin tables of shape [max_positions, dim] (frequencies repeated over both halves)."""
    inv = inverse_frequencies(rope, dim)
    angles = np.outer(np.arange(max_positions, dtype=np.float64), inv)
    angles = np.concatenate([angles, angles], axis=-1)
    mscale = 1.0
    if rope.rope_type == "yarn":
        mscale = yarn_get_mscale(rope.factor, rope.mscale) / yarn_get_mscale(rope.factor, rope.mscale_all_dim)
    return (np.cos(angles) * mscale).astype(np.float32), (np.sin(angles) * mscale).astype(np.float32)


def rotation_indices(dim: int, interleave: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index/sign vectors so that rotated = x[..., a] * cos + x[..., b] * sign * sin.

    With interleave, (x0, x1, x2, x3, ...) is first regrouped to (x0, x2, ..., x1, x3, ...) as
    DeepSeek does, then the halves are rotated. Folding both into two gathers keeps the dispatch
    count of the MindSpore path low and the same for both layouts.
    """
    half = dim // 2
    perm = np.concatenate([np.arange(0, dim, 2), np.arange(1, dim, 2)]) if interleave else np.arange(dim)
    partner = np.concatenate([perm[half:], perm[:half]])
    sign = np.concatenate([-np.ones(half), np.ones(half)]).astype(np.float32)
    return perm.astype(np.int32), partner.astype(np.int32), sign
