"""Quantized linears run per call with MindSpore ops (W8A8 static and per-token, A16W4 GPTQ), and the RTN checkpoint
quantizer.

Each linear keeps its checkpoint tensors on the device as stored and does on every call what a deployment's
quantized layer does on its host path, one counted dispatch per operator (runtime/kernels.py):

* static W8A8: quantize the activation with the calibrated per-tensor scale and offset (div, add, round,
  clamp, cast), integer matmul with int32 accumulation, add `quant_bias`, cast, multiply by `deq_scale`;
* dynamic W8A8 (MoE experts): per-token scale max|x|/127 (abs, amax, maximum, div), quantize (div, round,
  cast), integer matmul, rescale by the token scale and the per-channel `weight_scale` (and subtract the
  `weight_offset` term when a checkpoint has non-zero offsets);
* A16W4: unpack the 4-bit codes and zero points (shift, mask), gather each input row's zero and scale by
  `g_idx`, dequantize to float32 and multiply (GPTQ's dequantize-then-matmul path; activations stay float32,
  the model's compute type here).

Integer arithmetic on this backend (probed on MindSpore 2.10 CPU; see runtime/kernels.py): MatMul of int8 by
int8 returns int8 (wrapping), so there is no int8 GEMM with int32 accumulation; int32 x int32 works but needs
a Cast on each side, and a Cast costs about 0.4 ms of host time per call here, several times the rest of
the linear. So the int8 codes are widened once at load into float32 tensors holding the same integers, and
the quantized activations are integer-valued float32: every product and partial sum is an integer below
2^24, so float32 accumulates them exactly, as an int32 accumulator would (`exact_in_float32`). A linear too
wide for that bound (in_features > 1032) takes the int32 path, casts included. In A16W4 the unpacked codes
reach float32 by a promoting multiply, not a Cast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import mindspore as ms
import numpy as np

from runtime import kernels as K
from runtime.config import DeepseekV3Config
from runtime.quant import (
    QuantConfig,
    RawTensor,
    linear_tensors,
    quantize_fp8_block,
    quantize_gptq,
    quantize_w8a8_dynamic,
    quantize_w8a8_static,
    quantized_linears,
)

_SHIFTS = np.arange(0, 32, 4, dtype=np.int32)


def exact_in_float32(in_features: int) -> bool:
    """Whether sums of in_features products of int8 codes (|a| <= 128, |b| <= 127) stay below 2^24."""
    return in_features * 128 * 127 < 2**24


class W8A8StaticLinear:
    """y = deq_scale * (q(x) @ W^T + quant_bias), q(x) = clamp(round(x / input_scale + input_offset), -128, 127)."""

    def __init__(self, t: dict[str, np.ndarray]):
        self.exact_float = exact_in_float32(t["weight"].shape[1])
        code = np.float32 if self.exact_float else np.int32
        self.weight = K.to_device(t["weight"].astype(code))
        self.quant_bias = K.to_device(t["quant_bias"].astype(code))
        self.deq_scale = K.to_device(t["deq_scale"])
        self.input_scale = K.to_device(t["input_scale"])
        self.input_offset = K.to_device(t["input_offset"])

    def __call__(self, x):
        xq = K.clamp(K.round_half_even(K.add(K.div(x, self.input_scale), self.input_offset)), -128.0, 127.0)
        if self.exact_float:
            return K.mul(K.add(K.linear(xq, self.weight), self.quant_bias), self.deq_scale)
        acc = K.add(K.linear(K.cast(xq, ms.int32), self.weight), self.quant_bias)
        return K.mul(K.cast(acc, ms.float32), self.deq_scale)


class W8A8DynamicLinear:
    """y = s_tok * weight_scale * (round(x / s_tok) @ (W - weight_offset)^T), s_tok = max|x| / 127 per token."""

    def __init__(self, t: dict[str, np.ndarray]):
        self.exact_float = exact_in_float32(t["weight"].shape[1])
        self.weight = K.to_device(t["weight"].astype(np.float32 if self.exact_float else np.int32))
        self.weight_scale = K.to_device(t["weight_scale"].reshape(1, -1))
        offset = t["weight_offset"].reshape(1, -1)
        self.weight_offset = K.to_device(offset) if np.any(offset) else None
        self.tiny = K.to_device(np.array(1e-12, np.float32))

    def __call__(self, x):
        s = K.div(K.maximum(K.abs_max_last(x), self.tiny), 127.0)
        xq = K.round_half_even(K.div(x, s))
        if self.exact_float:
            acc = K.linear(xq, self.weight)
        else:
            acc = K.cast(K.linear(K.cast(xq, ms.int32), self.weight), ms.float32)
        if self.weight_offset is not None:
            acc = K.sub(acc, K.mul(K.sum_last(xq, keepdim=True), self.weight_offset))
        return K.mul(K.mul(acc, s), self.weight_scale)


class GPTQLinear:
    """y = x @ ((codes - zeros[g_idx]) * scales[g_idx]), codes and zeros unpacked from their int32 words per call."""

    def __init__(self, qc: QuantConfig, t: dict[str, np.ndarray]):
        k8, n = t["qweight"].shape
        groups, n8 = t["qzeros"].shape
        self.k, self.n, self.groups = 8 * k8, n, groups
        self.qweight = K.to_device(t["qweight"].reshape(k8, 1, n))
        self.qzeros = K.to_device(t["qzeros"].reshape(groups, n8, 1))
        self.scales = K.to_device(t["scales"])  # float16, as stored
        self.g_idx = K.to_device(t["g_idx"])
        self.row_shifts = K.to_device(_SHIFTS.reshape(1, 8, 1))
        self.col_shifts = K.to_device(_SHIFTS.reshape(1, 1, 8))
        self.mask = K.to_device(np.array(15, np.int32))
        self.zero_offset = K.to_device(np.array(qc.zero_offset, np.int32)) if qc.zero_offset else None
        self.one = K.to_device(np.array(1.0, np.float32))

    def __call__(self, x):
        codes = K.reshape(K.bitwise_and(K.shift_right(self.qweight, self.row_shifts), self.mask), (self.k, self.n))
        zeros = K.reshape(K.bitwise_and(K.shift_right(self.qzeros, self.col_shifts), self.mask), (self.groups, self.n))
        if self.zero_offset is not None:
            zeros = K.add(zeros, self.zero_offset)
        centred = K.mul(K.sub(codes, K.gather_rows(zeros, self.g_idx)), self.one)  # int32 -> float32 by promotion
        return K.matmul(x, K.mul(centred, K.gather_rows(self.scales, self.g_idx)))


def build_linears(cfg: DeepseekV3Config, weights: dict[str, np.ndarray]) -> tuple[dict[str, Callable], set[str]]:
    """(linear base name -> quantized linear, names of the tensors they hold) for a checkpoint that runs quantized.

    Empty for float and FP8 checkpoints (the loader has already dequantized FP8).
    """
    qc = cfg.quant
    if qc is None or not qc.runs_quantized:
        return {}, set()
    from runtime.weights import expected_tensors

    float_shapes = expected_tensors(replace(cfg, quant=None))
    linears: dict[str, Callable] = {}
    used: set[str] = set()
    for base, kind in quantized_linears(qc, float_shapes).items():
        n, k = float_shapes[base + ".weight"]
        names = {suffix: f"{base}.{suffix}" for suffix in linear_tensors(qc, kind, n, k)}
        t = {suffix: weights[name] for suffix, name in names.items()}
        used.update(names.values())
        if kind == "static":
            linears[base] = W8A8StaticLinear(t)
        elif kind == "dynamic":
            linears[base] = W8A8DynamicLinear(t)
        else:
            linears[base] = GPTQLinear(qc, t)
    return linears, used


# -- writing quantized checkpoints ---------------------------------------------------------------------------------
CALIBRATION_TOKENS = 64
"""Random prompt tokens whose activations calibrate the static W8A8 input ranges."""


def calibrate(
    cfg: DeepseekV3Config, tensors: dict[str, np.ndarray], bases: list[str], seed: int
) -> dict[str, tuple[float, float]]:
    """(min, max) of the input of each linear in `bases` over a random prompt run through the float model."""
    from runtime.model import DeepseekV3Model, contiguous_batch

    float_cfg = replace(cfg, quant=None)
    model = DeepseekV3Model(float_cfg, tensors, CALIBRATION_TOKENS)
    ranges: dict[str, tuple[float, float]] = {}

    def recorder(base: str):
        weight = model.w[base + ".weight"]

        def run(x):
            a = K.to_host(x)
            lo, hi = ranges.get(base, (np.inf, -np.inf))
            ranges[base] = (min(lo, float(a.min())), max(hi, float(a.max())))
            return K.linear(x, weight)

        return run

    model.quant_linears = {b: recorder(b) for b in bases if b + ".weight" in model.w}
    tokens = np.random.default_rng([seed, 99]).integers(0, cfg.vocab_size, CALIBRATION_TOKENS)
    K.to_host(model.forward(contiguous_batch(tokens, 0)))
    return ranges


def quantize_checkpoint(
    cfg: DeepseekV3Config, tensors: dict[str, np.ndarray], method: str, seed: int = 0
) -> tuple[DeepseekV3Config, dict[str, np.ndarray | RawTensor]]:
    """(config with `quant` set, tensors in the scheme's layout) from float tensors, by rounding to nearest.

    Static W8A8 input ranges come from `calibrate`; multi-token-prediction layers, which this runtime never
    runs, get the widest range observed in the main layers.
    """
    qc = QuantConfig(method)
    float_shapes = {name: a.shape for name, a in tensors.items()}
    kinds = quantized_linears(qc, float_shapes)
    static = [b for b, kind in kinds.items() if kind == "static"]
    ranges = calibrate(cfg, tensors, static, seed) if static else {}
    widest = (min((r[0] for r in ranges.values()), default=-1.0), max((r[1] for r in ranges.values()), default=1.0))
    out: dict[str, np.ndarray | RawTensor] = {}
    for name, a in tensors.items():
        base = name[: -len(".weight")] if name.endswith(".weight") else None
        kind = kinds.get(base)
        if kind is None:
            out[name] = a
            continue
        if kind == "static":
            parts = quantize_w8a8_static(a, *ranges.get(base, widest))
        elif kind == "dynamic":
            parts = quantize_w8a8_dynamic(a)
        elif kind == "gptq":
            parts = quantize_gptq(a, qc.group_size, qc.zero_offset)
        else:
            parts = quantize_fp8_block(a, qc.block)
            parts["weight"] = RawTensor("F8_E4M3", a.shape, parts["weight"].tobytes())
        out.update({f"{base}.{suffix}": v for suffix, v in parts.items()})
    return replace(cfg, quant=qc), out
