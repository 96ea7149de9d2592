"""Graph-mode linears (runtime/graph.py): float, W8A8 and A16W4 projections and stacked MoE experts as nn.Cells.

The same arithmetic as runtime/quant_linear.py's per-call linears, written for mindspore.jit: a float linear is
one MatMul; a quantized one quantizes the activation, multiplies integer codes held in float32 (exact: see
quant_linear.py) and rescales, or unpacks and dequantizes its 4-bit weights, inside the compiled graph. The
routed experts of a MoE layer are stacked ([E, in, out], GPTQ's orientation) so that every expert runs as one
batched matmul, as GraphModel's float experts do.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np
from mindspore import Parameter, Tensor, mint, nn, ops

from runtime.config import DeepseekV3Config
from runtime.errors import EngineError
from runtime.quant import QuantConfig, linear_tensors, quantized_linears

_SHIFTS = np.arange(0, 32, 4, dtype=np.int32)


def _param(a: np.ndarray, name: str, dtype=np.float32) -> Parameter:
    return Parameter(Tensor(np.ascontiguousarray(a, dtype=dtype)), name=name, requires_grad=False)


def _const(value, dtype) -> Tensor:
    return Tensor(np.array(value, dtype))


class FloatLinear(nn.Cell):
    """x @ weight^T."""

    def __init__(self, weight: np.ndarray, name: str):
        super().__init__()
        self.weight = _param(weight, name)
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        return self.matmul(x, self.weight)


def _per_token_quantize(x, tiny):
    """(integer-valued codes, scale) with scale = max|x| / 127 along the last axis."""
    s = ops.maximum(mint.amax(mint.abs(x), -1, True), tiny) / 127.0
    return mint.round(x / s), s


class W8A8StaticLinear(nn.Cell):
    """deq_scale * (clamp(round(x / input_scale + input_offset)) @ codes^T + quant_bias)."""

    def __init__(self, t: dict[str, np.ndarray], name: str):
        super().__init__()
        self.weight = _param(t["weight"], name + ".codes")
        self.quant_bias = _param(t["quant_bias"], name + ".quant_bias")
        self.deq_scale = _param(t["deq_scale"], name + ".deq_scale")
        self.input_scale = _param(t["input_scale"], name + ".input_scale")
        self.input_offset = _param(t["input_offset"], name + ".input_offset")
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        xq = mint.clamp(mint.round(x / self.input_scale + self.input_offset), -128.0, 127.0)
        return (self.matmul(xq, self.weight) + self.quant_bias) * self.deq_scale


class W8A8DynamicLinear(nn.Cell):
    """s_tok * weight_scale * (round(x / s_tok) @ (codes - weight_offset)^T)."""

    def __init__(self, t: dict[str, np.ndarray], name: str):
        super().__init__()
        self.weight = _param(t["weight"], name + ".codes")
        self.weight_scale = _param(t["weight_scale"].reshape(1, -1), name + ".weight_scale")
        self.weight_offset = _param(t["weight_offset"].reshape(1, -1), name + ".weight_offset")
        self.tiny = _const(1e-12, np.float32)
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        xq, s = _per_token_quantize(x, self.tiny)
        acc = self.matmul(xq, self.weight) - ops.sum(xq, -1, True) * self.weight_offset
        return acc * s * self.weight_scale


def _unpack(qweight, qzeros, scales, g_idx, row_shifts, col_shifts, zero_offset, k, n, groups, lead):
    """Dequantized weight [*lead, K, N] of GPTQ tensors with leading axes `lead` (() or (E,))."""
    axis = len(lead)
    codes = ops.reshape(ops.bitwise_and(ops.bitwise_right_shift(qweight, row_shifts), 15), lead + (k, n))
    zeros = ops.reshape(ops.bitwise_and(ops.bitwise_right_shift(qzeros, col_shifts), 15), lead + (groups, n))
    zeros = zeros + zero_offset
    centred = (codes - ops.gather(zeros, g_idx, axis)) * 1.0
    return centred * ops.gather(scales, g_idx, axis)


class GPTQLinear(nn.Cell):
    """x @ ((codes - zeros[g_idx]) * scales[g_idx]), unpacked in the graph."""

    def __init__(self, qc: QuantConfig, t: dict[str, np.ndarray], name: str):
        super().__init__()
        k8, n = t["qweight"].shape
        groups, n8 = t["qzeros"].shape
        self.k, self.n, self.groups = 8 * k8, n, groups
        self.qweight = _param(t["qweight"].reshape(k8, 1, n), name + ".qweight", np.int32)
        self.qzeros = _param(t["qzeros"].reshape(groups, n8, 1), name + ".qzeros", np.int32)
        self.scales = _param(t["scales"], name + ".scales", np.float16)
        self.g_idx = _param(t["g_idx"], name + ".g_idx", np.int32)
        self.row_shifts = _const(_SHIFTS.reshape(1, 8, 1), np.int32)
        self.col_shifts = _const(_SHIFTS.reshape(1, 1, 8), np.int32)
        self.zero_offset = _const(qc.zero_offset, np.int32)
        self.matmul = ops.MatMul()

    def construct(self, x):
        w = _unpack(self.qweight, self.qzeros, self.scales, self.g_idx, self.row_shifts, self.col_shifts,
                    self.zero_offset, self.k, self.n, self.groups, ())
        return self.matmul(x, w)


@lru_cache(maxsize=8)
def _layout(cfg: DeepseekV3Config) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(float tensor shapes, quantized linear -> kind) of a config (no kinds for float and FP8 checkpoints)."""
    from runtime.weights import expected_tensors

    shapes = expected_tensors(replace(cfg, quant=None))
    if cfg.quant is None or not cfg.quant.runs_quantized:
        return shapes, {}
    return shapes, quantized_linears(cfg.quant, shapes)


def _parts(cfg: DeepseekV3Config, weights: dict[str, np.ndarray], base: str, kind: str) -> dict[str, np.ndarray]:
    n, k = _layout(cfg)[0][base + ".weight"]
    return {suffix: weights[f"{base}.{suffix}"] for suffix in linear_tensors(cfg.quant, kind, n, k)}


def graph_linear(cfg: DeepseekV3Config, weights: dict[str, np.ndarray], base: str, name: str) -> nn.Cell:
    """The Cell for linear `base` (`model.layers.0.self_attn.o_proj`): float, W8A8 or A16W4 as the checkpoint holds
    it."""
    kind = _layout(cfg)[1].get(base)
    if kind is None:
        return FloatLinear(weights[base + ".weight"], name)
    t = _parts(cfg, weights, base, kind)
    if kind == "static":
        return W8A8StaticLinear(t, name)
    if kind == "dynamic":
        return W8A8DynamicLinear(t, name)
    return GPTQLinear(cfg.quant, t, name)


class FloatExperts(nn.Cell):
    """Every routed expert's SwiGLU on every token: y [E, T, H] from x [T, H] (stacked, pre-transposed weights)."""

    def __init__(self, weights: dict[str, np.ndarray], prefixes: list[str], name: str):
        super().__init__()
        self.e = len(prefixes)
        self.gate_t = _param(np.stack([weights[p + "gate_proj.weight"].T for p in prefixes]), name + ".gate_t")
        self.up_t = _param(np.stack([weights[p + "up_proj.weight"].T for p in prefixes]), name + ".up_t")
        self.down_t = _param(np.stack([weights[p + "down_proj.weight"].T for p in prefixes]), name + ".down_t")

    def construct(self, x):
        xb = ops.broadcast_to(ops.expand_dims(x, 0), (self.e, x.shape[0], x.shape[1]))
        return mint.bmm(ops.silu(mint.bmm(xb, self.gate_t)) * mint.bmm(xb, self.up_t), self.down_t)


class W8A8DynamicExperts(nn.Cell):
    """FloatExperts with per-token int8 activations and per-channel int8 codes (held in float32), stacked."""

    def __init__(self, weights: dict[str, np.ndarray], prefixes: list[str], name: str):
        super().__init__()
        self.e = len(prefixes)

        def stack(proj: str, suffix: str, transpose: bool) -> np.ndarray:
            arrays = [weights[f"{p}{proj}.{suffix}"] for p in prefixes]
            return np.stack([a.T if transpose else a for a in arrays]).astype(np.float32)

        for proj in ("gate_proj", "up_proj", "down_proj"):
            short = proj.split("_")[0]
            # codes [E, in, out], scale [E, 1, out]
            setattr(self, short + "_codes", _param(stack(proj, "weight", True), f"{name}.{short}.codes"))
            setattr(self, short + "_scale", _param(stack(proj, "weight_scale", True), f"{name}.{short}.scale"))
            offset = stack(proj, "weight_offset", True)
            if np.any(offset):
                raise EngineError(f"{name}: graph-mode experts take symmetric weights (weight_offset all zero)")
        self.tiny = _const(1e-12, np.float32)

    def construct(self, x):
        xq, s = _per_token_quantize(x, self.tiny)  # [T, H], [T, 1]
        xb = ops.broadcast_to(ops.expand_dims(xq, 0), (self.e, x.shape[0], x.shape[1]))
        g = mint.bmm(xb, self.gate_codes) * s * self.gate_scale
        u = mint.bmm(xb, self.up_codes) * s * self.up_scale
        hq, hs = _per_token_quantize(ops.silu(g) * u, self.tiny)  # [E, T, I], [E, T, 1]
        return mint.bmm(hq, self.down_codes) * hs * self.down_scale


class GPTQExperts(nn.Cell):
    """FloatExperts with each expert's 4-bit GPTQ weights unpacked and dequantized in the graph, stacked."""

    def __init__(self, qc: QuantConfig, weights: dict[str, np.ndarray], prefixes: list[str], name: str):
        super().__init__()
        self.e = len(prefixes)
        self.dims = {}
        for proj in ("gate_proj", "up_proj", "down_proj"):
            short = proj.split("_")[0]
            qw = np.stack([weights[f"{p}{proj}.qweight"] for p in prefixes])  # [E, K/8, N]
            qz = np.stack([weights[f"{p}{proj}.qzeros"] for p in prefixes])  # [E, G, N/8]
            e, k8, n = qw.shape
            groups = qz.shape[1]
            g_idx = weights[f"{prefixes[0]}{proj}.g_idx"]
            if any(not np.array_equal(weights[f"{p}{proj}.g_idx"], g_idx) for p in prefixes):
                raise EngineError(f"{name}: graph-mode experts need the same g_idx in every expert")
            setattr(self, short + "_qweight", _param(qw.reshape(e, k8, 1, n), f"{name}.{short}.qweight", np.int32))
            setattr(
                self, short + "_qzeros", _param(qz.reshape(e, groups, n // 8, 1), f"{name}.{short}.qzeros", np.int32)
            )
            scales = np.stack([weights[f"{p}{proj}.scales"] for p in prefixes])
            setattr(self, short + "_scales", _param(scales, f"{name}.{short}.scales", np.float16))
            setattr(self, short + "_g_idx", _param(g_idx, f"{name}.{short}.g_idx", np.int32))
            self.dims[short] = (8 * k8, n, groups)
        self.gate_dims, self.up_dims, self.down_dims = self.dims["gate"], self.dims["up"], self.dims["down"]
        self.row_shifts = _const(_SHIFTS.reshape(1, 1, 8, 1), np.int32)
        self.col_shifts = _const(_SHIFTS.reshape(1, 1, 1, 8), np.int32)
        self.zero_offset = _const(qc.zero_offset, np.int32)

    def _weight(self, qweight, qzeros, scales, g_idx, dims):
        k, n, groups = dims
        return _unpack(qweight, qzeros, scales, g_idx, self.row_shifts, self.col_shifts, self.zero_offset,
                       k, n, groups, (self.e,))

    def construct(self, x):
        xb = ops.broadcast_to(ops.expand_dims(x, 0), (self.e, x.shape[0], x.shape[1]))
        gate = self._weight(self.gate_qweight, self.gate_qzeros, self.gate_scales, self.gate_g_idx, self.gate_dims)
        up = self._weight(self.up_qweight, self.up_qzeros, self.up_scales, self.up_g_idx, self.up_dims)
        down = self._weight(self.down_qweight, self.down_qzeros, self.down_scales, self.down_g_idx, self.down_dims)
        return mint.bmm(ops.silu(mint.bmm(xb, gate)) * mint.bmm(xb, up), down)


def graph_experts(cfg: DeepseekV3Config, weights: dict[str, np.ndarray], layer: int, name: str) -> nn.Cell:
    """The Cell running layer `layer`'s routed experts on every token, in the checkpoint's layout."""
    prefixes = [f"model.layers.{layer}.mlp.experts.{e}." for e in range(cfg.n_routed_experts)]
    kind = _layout(cfg)[1].get(prefixes[0] + "gate_proj")
    if kind is None:
        return FloatExperts(weights, prefixes, name)
    if kind == "dynamic":
        return W8A8DynamicExperts(weights, prefixes, name)
    return GPTQExperts(cfg.quant, weights, prefixes, name)
