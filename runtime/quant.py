"""Quantized checkpoints: the W8A8, A16W4 (GPTQ) and FP8-block layouts, their tensor sets, RTN quantizers and NumPy
dequantizers.

A checkpoint says it is quantized with `quantization_config` in config.json:

* `{"quant_method": "golden-stick", "quant_type": "w8a8", "moe_quant_type": "w8a8-dynamic"}`: MindSpore
  golden-stick's W8A8 layout. Attention and dense-MLP linears are static W8A8: `<linear>.weight` int8
  [out, in] (per-channel symmetric), `deq_scale` float32 [out] (input_scale x weight scale),
  `quant_bias` int32 [out] (-input_offset x the row sums of the int8 weight: the input offset folded into
  the int32 accumulator), `input_scale` and `input_offset` float32 [1] (per-tensor asymmetric activation
  quantization, calibrated). The MoE layers' experts (routed and shared) are dynamic W8A8: `weight` int8
  [out, in], `weight_scale` and `weight_offset` float32 [out, 1]; their activations are quantized per token
  at run time.
* `{"quant_method": "gptq", "bits": 4, "group_size": 64, "sym": true, "desc_act": false,
  "checkpoint_format": "gptq"}`: A16W4 in the GPTQ layout: `qweight` int32 [in/8, out] with eight 4-bit
  values packed along the input dimension, low bits first (row 8i+j of the [in, out] code matrix in bits
  4j..4j+3 of row i); `qzeros` int32 [ceil(in/G), out/8] packed the same way along the output dimension;
  `scales` float16 [ceil(in/G), out]; `g_idx` int32 [in] (the group of each input row). Format `gptq`
  (v1) stores each zero point minus one, as AutoGPTQ writes it; `gptq_v2` stores it as is.
* `{"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}`:
  DeepSeek-V3's own layout: `weight` F8_E4M3 and `weight_scale_inv` float32 [ceil(out/128), ceil(in/128)],
  one scale per 128x128 block. This runtime dequantizes it when loading (the other two stay quantized and
  run through runtime/quant_linear.py on every call).

Which linears are quantized (`quantized_linears`): the decoder layers' attention projections and MLP/expert
projections. Never the embedding, lm_head, norms or MoE router; `kv_b_proj`, which MLA absorbs into the
query and the output at load time, is quantized only in the FP8 layout (DeepSeek's published FP8 checkpoints
carry it in FP8; the loader dequantizes it like every FP8 weight).

Nothing here imports MindSpore: config.py and weights.py use it at start-up.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("w8a8", "a16w4", "fp8")
"""The quantization schemes this runtime reads (`python -m runtime checkpoint --quant` writes them all)."""

_LINEAR_RE = re.compile(
    r"^model\.layers\.\d+\.(?:self_attn\.(?:q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
    r"|mlp\.(?:experts\.\d+\.|shared_experts\.)?(?:gate_proj|up_proj|down_proj))\.weight$"
)
FP8_MAX = 448.0
"""Largest finite float8 E4M3 (fn) value."""


@dataclass(frozen=True)
class QuantConfig:
    """How a checkpoint's linears are quantized (config.json's `quantization_config`)."""

    method: str
    """`w8a8` (golden-stick), `a16w4` (GPTQ) or `fp8` (DeepSeek's block FP8)."""
    group_size: int = 64
    """A16W4: input rows per scale/zero group (MindSpore's gptq-pergroup uses 64)."""
    zero_offset: int = 1
    """A16W4: added to each stored zero point (1 for GPTQ format v1, `gptq`; 0 for `gptq_v2`)."""
    block: tuple[int, int] = (128, 128)
    """FP8: the [out, in] block that one `weight_scale_inv` entry covers."""

    @property
    def runs_quantized(self) -> bool:
        """Whether the model keeps these weights quantized and runs quantized linears (FP8 is dequantized at load)."""
        return self.method != "fp8"

    def to_hf_dict(self) -> dict[str, Any]:
        """config.json's `quantization_config` for this scheme."""
        if self.method == "w8a8":
            return {"quant_method": "golden-stick", "quant_type": "w8a8", "moe_quant_type": "w8a8-dynamic"}
        if self.method == "a16w4":
            return {
                "quant_method": "gptq",
                "bits": 4,
                "group_size": self.group_size,
                "sym": True,
                "desc_act": False,
                "checkpoint_format": "gptq" if self.zero_offset == 1 else "gptq_v2",
            }
        return {
            "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": list(self.block)
        }


def parse_quantization_config(raw: Any, err: Callable[[str], Exception]) -> QuantConfig | None:
    """A validated QuantConfig from config.json's `quantization_config` (None when absent); `err` builds the error."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise err(f"'quantization_config' must be an object, got {raw!r}")
    method = raw.get("quant_method")

    def need(key: str, allowed: tuple) -> Any:
        v = raw.get(key)
        if v not in allowed:
            raise err(f"'quantization_config.{key}' is {v!r}; {method} checkpoints need one of {list(allowed)}")
        return v

    if method == "golden-stick":
        need("quant_type", ("w8a8",))
        need("moe_quant_type", ("w8a8-dynamic",))
        return QuantConfig("w8a8")
    if method == "gptq":
        need("bits", (4,))
        g = raw.get("group_size")
        if isinstance(g, bool) or not isinstance(g, int) or g < 8 or g % 8:
            raise err(f"'quantization_config.group_size' must be a positive multiple of 8, got {g!r}")
        fmt = raw.get("checkpoint_format", "gptq")
        if fmt not in ("gptq", "gptq_v2"):
            raise err(f"'quantization_config.checkpoint_format' is {fmt!r}; supported: 'gptq', 'gptq_v2'")
        return QuantConfig("a16w4", group_size=g, zero_offset=1 if fmt == "gptq" else 0)
    if method == "fp8":
        need("fmt", ("e4m3",))
        block = raw.get("weight_block_size")
        if (
            not isinstance(block, list)
            or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)
        ):
            raise err(
                f"'quantization_config.weight_block_size' must be two positive integers (block-wise FP8), got {block!r}"
            )
        return QuantConfig("fp8", block=(block[0], block[1]))
    raise err(
        f"'quantization_config.quant_method' is {method!r}; this runtime reads 'golden-stick' (W8A8), "
        "'gptq' (A16W4) and 'fp8' (block-wise E4M3)"
    )


# -- the tensor set -------------------------------------------------------------------------------------------
def quantized_linears(qc: QuantConfig, float_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, str]:
    """Linear base name (`model.layers.N.self_attn.o_proj`) -> kind for every linear stored quantized.

    Kinds: `static` / `dynamic` (W8A8: activations per tensor, calibrated / per token at run time), `gptq`, `fp8`.
    `float_shapes` is the float checkpoint's name -> shape map (runtime.weights.expected_tensors without quant).
    """
    out: dict[str, str] = {}
    for name in float_shapes:
        if not _LINEAR_RE.match(name):
            continue
        base = name[: -len(".weight")]
        if qc.method == "fp8":
            out[base] = "fp8"
        elif base.endswith("kv_b_proj"):
            continue
        elif qc.method == "a16w4":
            out[base] = "gptq"
        else:
            out[base] = "dynamic" if (".mlp.experts." in base or ".mlp.shared_experts." in base) else "static"
    return out


def linear_tensors(
    qc: QuantConfig, kind: str, out_features: int, in_features: int
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Suffix (`weight`, `deq_scale`, ...) -> (shape, safetensors dtype) of one quantized linear."""
    n, k = out_features, in_features
    if kind == "static":
        return {
            "weight": ((n, k), "I8"),
            "deq_scale": ((n,), "F32"),
            "quant_bias": ((n,), "I32"),
            "input_scale": ((1,), "F32"),
            "input_offset": ((1,), "F32"),
        }
    if kind == "dynamic":
        return {"weight": ((n, k), "I8"), "weight_scale": ((n, 1), "F32"), "weight_offset": ((n, 1), "F32")}
    if kind == "gptq":
        groups = -(-k // qc.group_size)
        return {
            "qweight": ((k // 8, n), "I32"),
            "qzeros": ((groups, n // 8), "I32"),
            "scales": ((groups, n), "F16"),
            "g_idx": ((k,), "I32"),
        }
    if kind == "fp8":
        b0, b1 = qc.block
        return {"weight": ((n, k), "F8_E4M3"), "weight_scale_inv": ((-(-n // b0), -(-k // b1)), "F32")}
    raise ValueError(f"unknown quantized linear kind {kind!r}")


def quantized_tensor_set(
    qc: QuantConfig, float_shapes: Mapping[str, tuple[int, ...]]
) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(name -> shape in the original order, name -> required dtype) of a checkpoint quantized with `qc`.

    Raises ValueError naming the linear when its widths do not fit the layout (GPTQ packs eight values per int32).
    """
    kinds = quantized_linears(qc, float_shapes)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for name, shape in float_shapes.items():
        base = name[: -len(".weight")] if name.endswith(".weight") else None
        if base not in kinds:
            shapes[name] = shape
            continue
        n, k = shape
        if kinds[base] == "gptq" and (k % 8 or n % 8):
            raise ValueError(
                f"{base}: GPTQ packs eight 4-bit values per int32, so [{n}, {k}] needs both widths divisible by 8"
            )
        for suffix, (s, dt) in linear_tensors(qc, kinds[base], n, k).items():
            shapes[f"{base}.{suffix}"] = s
            dtypes[f"{base}.{suffix}"] = dt
    return shapes, dtypes


# -- packing ------------------------------------------------------------------------------------------------------
_SHIFTS = np.arange(0, 32, 4, dtype=np.uint32)


def pack_int4(codes: np.ndarray, axis: int) -> np.ndarray:
    """Pack 4-bit codes (0..15) eight per int32 along `axis` (0 or 1), the first of each eight in the lowest bits."""
    c = np.asarray(codes).astype(np.uint32)
    if np.any(c > 15):
        raise ValueError("4-bit codes must be in 0..15")
    if axis == 0:
        grouped = c.reshape(c.shape[0] // 8, 8, c.shape[1]) << _SHIFTS[None, :, None]
        packed = grouped.sum(axis=1, dtype=np.uint32)
    else:
        grouped = c.reshape(c.shape[0], c.shape[1] // 8, 8) << _SHIFTS[None, None, :]
        packed = grouped.sum(axis=2, dtype=np.uint32)
    return packed.view(np.int32)


def unpack_int4(packed: np.ndarray, axis: int) -> np.ndarray:
    """The inverse of pack_int4: int32 [rows, cols] -> codes int32 with `axis` eight times longer."""
    p = np.asarray(packed, dtype=np.int32).view(np.uint32)
    if axis == 0:
        codes = (p[:, None, :] >> _SHIFTS[None, :, None]) & 15
        return codes.reshape(p.shape[0] * 8, p.shape[1]).astype(np.int32)
    codes = (p[:, :, None] >> _SHIFTS[None, None, :]) & 15
    return codes.reshape(p.shape[0], p.shape[1] * 8).astype(np.int32)


# -- round-to-nearest quantizers (NumPy; `python -m runtime checkpoint --quant`) ---------------------------------
def quantize_w8a8_static(w: np.ndarray, x_min: float, x_max: float) -> dict[str, np.ndarray]:
    """Static W8A8 tensors of float weight w [out, in] for inputs observed in [x_min, x_max]."""
    w = np.asarray(w, np.float32)
    w_scale = np.maximum(np.abs(w).max(axis=1), 1e-12) / 127.0
    q = np.clip(np.rint(w / w_scale[:, None]), -127, 127).astype(np.int8)
    lo, hi = min(float(x_min), 0.0), max(float(x_max), 0.0)
    in_scale = max(hi - lo, 1e-8) / 255.0
    offset = float(np.clip(np.rint(-128.0 - lo / in_scale), -128, 127))
    return {
        "weight": q,
        "deq_scale": (np.float32(in_scale) * w_scale).astype(np.float32),
        "quant_bias": (-int(offset) * q.astype(np.int64).sum(axis=1)).astype(np.int32),
        "input_scale": np.array([in_scale], np.float32),
        "input_offset": np.array([offset], np.float32),
    }


def quantize_w8a8_dynamic(w: np.ndarray) -> dict[str, np.ndarray]:
    """Dynamic (per-token activation) W8A8 tensors of float weight w [out, in]: per-channel symmetric int8."""
    w = np.asarray(w, np.float32)
    w_scale = (np.maximum(np.abs(w).max(axis=1), 1e-12) / 127.0).astype(np.float32)
    q = np.clip(np.rint(w / w_scale[:, None]), -127, 127).astype(np.int8)
    return {"weight": q, "weight_scale": w_scale[:, None], "weight_offset": np.zeros((w.shape[0], 1), np.float32)}


def quantize_gptq(w: np.ndarray, group_size: int, zero_offset: int = 1) -> dict[str, np.ndarray]:
    """Symmetric 4-bit GPTQ tensors (round to nearest, no Hessian updates) of float weight w [out, in]."""
    wt = np.asarray(w, np.float32).T  # [in, out]: GPTQ's orientation
    k, n = wt.shape
    g_idx = (np.arange(k) // group_size).astype(np.int32)
    groups = int(g_idx[-1]) + 1
    amax = np.stack([np.abs(wt[g_idx == g]).max(axis=0) for g in range(groups)])  # [G, out]
    scales = (np.maximum(amax, 1e-8) * 2.0 / 15.0).astype(np.float16)
    zeros = np.full((groups, n), 8, np.int32)
    s = scales.astype(np.float32)[g_idx]
    codes = np.clip(np.rint(wt / s) + 8, 0, 15).astype(np.int32)
    return {
        "qweight": pack_int4(codes, axis=0),
        "qzeros": pack_int4(zeros - zero_offset, axis=1),
        "scales": scales,
        "g_idx": g_idx,
    }


def dequantize_linear(qc: QuantConfig, kind: str, t: Mapping[str, np.ndarray]) -> np.ndarray:
    """The float32 weight [out, in] that one quantized linear's tensors (suffix -> array) stand for."""
    if kind in ("static", "dynamic"):
        q = t["weight"].astype(np.float32)
        if kind == "static":
            w_scale = t["deq_scale"] / t["input_scale"][0]
            return (q * w_scale[:, None]).astype(np.float32)
        return ((q - t["weight_offset"]) * t["weight_scale"]).astype(np.float32)
    if kind == "gptq":
        codes = unpack_int4(t["qweight"], axis=0)
        zeros = unpack_int4(t["qzeros"], axis=1) + qc.zero_offset
        g = t["g_idx"]
        w = (codes - zeros[g]).astype(np.float32) * t["scales"].astype(np.float32)[g]
        return np.ascontiguousarray(w.T)
    if kind == "fp8":
        return dequantize_fp8_block(t["weight"], t["weight_scale_inv"], qc.block)
    raise ValueError(f"unknown quantized linear kind {kind!r}")


def dequantize_weights(
    qc: QuantConfig, float_shapes: Mapping[str, tuple[int, ...]], weights: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The float32 weights a quantized checkpoint's tensors stand for (NumPy; the reference model and tests).

    `float_shapes` is the float tensor set (runtime.weights.expected_tensors without quant); tensors of linears
    that are not quantized pass through.
    """
    out = dict(weights)
    for base, kind in quantized_linears(qc, float_shapes).items():
        n, k = float_shapes[base + ".weight"]
        parts = {suffix: out.pop(f"{base}.{suffix}") for suffix in linear_tensors(qc, kind, n, k)}
        out[base + ".weight"] = dequantize_linear(qc, kind, parts)
    return out


# -- FP8 E4M3 ----------------------------------------------------------------------------------------------------
def _e4m3_table() -> np.ndarray:
    b = np.arange(256)
    sign = np.where(b & 0x80, -1.0, 1.0)
    e, m = (b >> 3) & 0xF, b & 7
    mag = np.where(e == 0, m / 8.0 * 2.0**-6, (1.0 + m / 8.0) * 2.0 ** (e.astype(np.float64) - 7))
    mag = np.where((e == 15) & (m == 7), np.nan, mag)
    return (sign * mag).astype(np.float32)


E4M3_VALUES = _e4m3_table()
"""float32 value of each float8 E4M3 (fn: no infinities, 0x7f/0xff are NaN) byte."""
_POS = E4M3_VALUES[:127]  # 0x00..0x7e: the non-negative finite values, increasing


def e4m3_encode(x: np.ndarray) -> np.ndarray:
    """uint8 E4M3 bytes nearest to x (clipped to +-448)."""
    a = np.clip(np.abs(np.asarray(x, np.float32)), 0.0, FP8_MAX)
    hi = np.clip(np.searchsorted(_POS, a), 1, 126)
    lo = hi - 1
    idx = np.where(a - _POS[lo] <= _POS[hi] - a, lo, hi).astype(np.uint8)
    return np.where(np.asarray(x) < 0, idx | 0x80, idx).astype(np.uint8)


def dequantize_fp8_block(codes: np.ndarray, scale_inv: np.ndarray, block: tuple[int, int] = (128, 128)) -> np.ndarray:
    """float32 weight of E4M3 bytes [out, in] times one `weight_scale_inv` entry per block x block tile."""
    vals = E4M3_VALUES[np.asarray(codes, np.uint8)]
    n, k = vals.shape
    s = np.repeat(np.repeat(np.asarray(scale_inv, np.float32), block[0], axis=0), block[1], axis=1)[:n, :k]
    return (vals * s).astype(np.float32)


def quantize_fp8_block(w: np.ndarray, block: tuple[int, int] = (128, 128)) -> dict[str, np.ndarray]:
    """E4M3 bytes and per-block `weight_scale_inv` of float weight w [out, in] (each block's max maps to 448)."""
    w = np.asarray(w, np.float32)
    n, k = w.shape
    b0, b1 = block
    gn, gk = -(-n // b0), -(-k // b1)
    padded = np.zeros((gn * b0, gk * b1), np.float32)
    padded[:n, :k] = np.abs(w)
    amax = padded.reshape(gn, b0, gk, b1).max(axis=(1, 3))
    scale_inv = (np.maximum(amax, 1e-12) / FP8_MAX).astype(np.float32)
    s = np.repeat(np.repeat(scale_inv, b0, axis=0), b1, axis=1)[:n, :k]
    return {"weight": e4m3_encode(w / s), "weight_scale_inv": scale_inv}


# -- safetensors dtypes NumPy cannot name ------------------------------------------------------------------------
@dataclass(frozen=True)
class RawTensor:
    """A tensor of a safetensors dtype NumPy has no type for (F8_E4M3), held as its raw little-endian bytes."""

    dtype: str
    """The safetensors dtype string (`F8_E4M3`, `BF16`)."""
    shape: tuple[int, ...]
    """The tensor's shape."""
    data: bytes
    """The element bytes, row-major."""

    @property
    def nbytes(self) -> int:
        return len(self.data)


_SAFETENSORS_DTYPES = {
    np.dtype(t): name
    for t, name in (("<f8", "F64"), ("<f4", "F32"), ("<f2", "F16"), ("<i8", "I64"), ("<i4", "I32"), ("<i2", "I16"),
                    ("i1", "I8"), ("u1", "U8"), ("?", "BOOL"))
}


@lru_cache(maxsize=64)
def _header(path: str, mtime_ns: int) -> tuple[int, dict]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


def read_raw(path: str | Path, name: str) -> np.ndarray:
    """The stored bytes of tensor `name` in a safetensors file, as uint8 (for dtypes NumPy lacks)."""
    p = Path(path)
    start, header = _header(str(p), p.stat().st_mtime_ns)
    lo, hi = header[name]["data_offsets"]
    with open(p, "rb") as f:
        f.seek(start + lo)
        return np.frombuffer(f.read(hi - lo), np.uint8)


def decode_raw(dtype: str, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A BF16 tensor's float32 values, or an F8_E4M3 tensor's bytes (uint8), from its stored bytes."""
    if dtype == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if dtype == "F8_E4M3":
        return raw.reshape(shape)
    raise ValueError(f"no raw decoding for {dtype}")


def save_safetensors(
    tensors: Mapping[str, np.ndarray | RawTensor], path: str | Path, metadata: Mapping[str, str]
) -> None:
    """Write a safetensors file whose tensors may include RawTensors (safetensors.numpy cannot write F8_E4M3)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    blobs: list[bytes] = []
    offset = 0
    for name, t in tensors.items():
        if isinstance(t, RawTensor):
            dtype, shape, data = t.dtype, list(t.shape), t.data
        else:
            a = np.ascontiguousarray(t)
            dtype, shape, data = _SAFETENSORS_DTYPES[a.dtype], list(a.shape), a.tobytes()
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.writelines(blobs)
