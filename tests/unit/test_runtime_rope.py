"""runtime.rope: YaRN tables against closed forms."""

import math

import pytest

np = pytest.importorskip("numpy")

from runtime.config import RopeConfig  # noqa: E402
from runtime.rope import cos_sin_tables, inverse_frequencies, rotation_indices, yarn_correction_range  # noqa: E402


def test_default_rope_is_plain():
    r = RopeConfig(theta=10000.0)
    inv = inverse_frequencies(r, 8)
    assert np.allclose(inv, [1.0, 10000**-0.25, 10000**-0.5, 10000**-0.75])
    cos, sin = cos_sin_tables(r, 8, 5)
    assert np.allclose(cos[3, :4], np.cos(3 * inv)) and np.allclose(sin[3, 4:], np.sin(3 * inv))


def test_yarn_blends_between_extrapolation_and_interpolation():
    r = RopeConfig(
        theta=10000.0,
        rope_type="yarn",
        factor=40.0,
        original_max_position_embeddings=4096,
        mscale=1.0,
        mscale_all_dim=1.0,
    )
    dim = 64
    low, high = yarn_correction_range(r, dim)
    # DeepSeek-V3's numbers: wavelengths fitting >32 turns in 4096 tokens keep their frequency.
    assert (low, high) == (
        math.floor(dim * math.log(4096 / (32 * 2 * math.pi)) / (2 * math.log(10000))),
        math.ceil(dim * math.log(4096 / (2 * math.pi)) / (2 * math.log(10000))),
    )
    inv = inverse_frequencies(r, dim)
    plain = inverse_frequencies(RopeConfig(theta=10000.0), dim)
    assert np.allclose(inv[:low], plain[:low])
    assert np.allclose(inv[high:], plain[high:] / 40.0)
    assert np.all(inv[low:high] <= plain[low:high]) and np.all(inv[low:high] >= plain[low:high] / 40.0)
    # mscale == mscale_all_dim: tables carry no extra magnitude
    cos, _ = cos_sin_tables(r, dim, 2)
    assert np.allclose(cos[0], 1.0)


def test_yarn_mscale_ratio_scales_tables():
    r = RopeConfig(
        theta=10000.0, rope_type="yarn", factor=4.0, original_max_position_embeddings=64, mscale=1.0, mscale_all_dim=0.0
    )
    cos, _ = cos_sin_tables(r, 8, 1)
    assert np.allclose(cos[0], 0.1 * math.log(4.0) + 1.0)


@pytest.mark.parametrize("interleave", [True, False])
def test_rotation_indices_match_rotate_half(interleave):
    d = 8
    x = np.arange(1, d + 1, dtype=np.float32)
    perm, partner, sign = rotation_indices(d, interleave)
    xp = np.concatenate([x[0::2], x[1::2]]) if interleave else x
    rotated = np.concatenate([-xp[d // 2 :], xp[: d // 2]])
    assert np.array_equal(x[perm], xp)
    assert np.array_equal(x[partner] * sign, rotated)
