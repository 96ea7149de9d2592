"""DeepSeek-V3 model configuration: parse a Hugging Face `config.json` into one frozen, validated model.

Two layouts are accepted:

* as published with the DeepSeek-V3/R1 checkpoints: top-level `rope_theta` and `rope_scaling`
  (`{"type": "yarn", "factor": ..., ...}`); queries and keys are always rotated in the interleaved
  layout;
* the newer Hugging Face layout: `rope_parameters` (`{"rope_type": "yarn", "rope_theta": ...}`)
  and a boolean `rope_interleave`.

A file may carry both; then every value present in both places must agree. Every error names the
file and the key. A `quantization_config` (W8A8, A16W4 GPTQ or DeepSeek's FP8 blocks) is parsed by
runtime/quant.py into `DeepseekV3Config.quant`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runtime.errors import ConfigError
from runtime.quant import QuantConfig, parse_quantization_config

_SUPPORTED_ROPE_TYPES = ("default", "yarn")

# Keys every DeepSeek-V3 config.json must carry (those the published checkpoints all have).
_REQUIRED_INT = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "moe_intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "n_routed_experts",
    "num_experts_per_tok",
    "n_group",
    "topk_group",
    "max_position_embeddings",
)
_REQUIRED_NONNEG_INT = ("first_k_dense_replace", "n_shared_experts")
_REQUIRED_FLOAT = ("routed_scaling_factor", "rms_norm_eps")
_YARN_FLOAT_DEFAULTS = {"beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.0}


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of the decoupled RoPE part of queries and keys."""

    theta: float
    """Base of the rotary frequencies (`rope_theta`)."""
    rope_type: str = "default"
    """`default` (plain RoPE) or `yarn` (YaRN context extension)."""
    factor: float = 1.0
    """YaRN scaling factor (context extension ratio)."""
    original_max_position_embeddings: int = 0
    """Context length the model was pre-trained with (YaRN only)."""
    beta_fast: float = 32.0
    """YaRN: rotations above which frequencies are kept as trained."""
    beta_slow: float = 1.0
    """YaRN: rotations below which frequencies are fully interpolated."""
    mscale: float = 1.0
    """YaRN attention-magnitude coefficient applied to cos/sin."""
    mscale_all_dim: float = 0.0
    """YaRN coefficient that also rescales the softmax (DeepSeek's `mscale_all_dim`)."""
    interleave: bool = True
    """Rotate (even, odd) pairs as DeepSeek's published code does (`rope_interleave`)."""


@dataclass(frozen=True)
class DeepseekV3Config:
    """The DeepSeek-V3 architecture hyper-parameters the runtime needs (names as in config.json)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    """Width of the SwiGLU MLP of the first `first_k_dense_replace` (dense) layers."""
    moe_intermediate_size: int
    """Width of each routed expert (shared experts are `n_shared_experts` times wider)."""
    num_hidden_layers: int
    num_attention_heads: int
    q_lora_rank: int | None
    """Rank of the low-rank query projection; None means a plain `q_proj` (DeepSeek-V2-Lite style)."""
    kv_lora_rank: int
    """Width of the compressed KV latent that the cache holds."""
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    routed_scaling_factor: float
    norm_topk_prob: bool
    scoring_func: str
    first_k_dense_replace: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeConfig
    num_nextn_predict_layers: int = 0
    """Multi-token-prediction layers stored after the main layers (never run by this runtime)."""
    tie_word_embeddings: bool = False
    quant: QuantConfig | None = None
    """How the checkpoint's linears are quantized (`quantization_config`; runtime/quant.py); None: float."""

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_dim(self) -> int:
        """Width of one cached token: compressed KV latent plus the shared RoPE key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.first_k_dense_replace

    @property
    def softmax_scale(self) -> float:
        scale = self.qk_head_dim**-0.5
        if self.rope.rope_type == "yarn" and self.rope.mscale_all_dim:
            m = yarn_get_mscale(self.rope.factor, self.rope.mscale_all_dim)
            scale *= m * m
        return scale

    def to_hf_dict(self, layout: str = "published") -> dict[str, Any]:
        """The config.json content: `published` (rope_theta/rope_scaling) or `parameters` layout."""
        d = {k: v for k, v in asdict(self).items() if k not in ("rope", "quant")}
        if self.quant is not None:
            d["quantization_config"] = self.quant.to_hf_dict()
        d["architectures"] = ["DeepseekV3ForCausalLM"]
        d["model_type"] = "deepseek_v3"
        d["hidden_act"] = "silu"
        d["topk_method"] = "noaux_tc"
        d["moe_layer_freq"] = 1
        d["num_key_value_heads"] = self.num_attention_heads
        d["attention_bias"] = False
        d["torch_dtype"] = "float32"
        r = self.rope
        yarn = None
        if r.rope_type == "yarn":
            yarn = {
                "factor": r.factor,
                "original_max_position_embeddings": r.original_max_position_embeddings,
                "beta_fast": r.beta_fast,
                "beta_slow": r.beta_slow,
                "mscale": r.mscale,
                "mscale_all_dim": r.mscale_all_dim,
            }
        if layout == "published":
            if not r.interleave:
                raise ConfigError("the published layout always interleaves; use layout='parameters'")
            d["rope_theta"] = r.theta
            d["rope_scaling"] = None if yarn is None else {"type": "yarn", **yarn}
        elif layout == "parameters":
            d["rope_parameters"] = {"rope_type": r.rope_type, "rope_theta": r.theta, **(yarn or {})}
            d["rope_interleave"] = r.interleave
        else:
            raise ConfigError(f"unknown config layout {layout!r} (published, parameters)")
        return d


def yarn_get_mscale(scale: float, mscale: float) -> float:
    """YaRN's attention magnitude correction for a context extension ratio `scale`."""
    if scale <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def load_config(path: str | Path) -> DeepseekV3Config:
    """Read and validate a config.json (or the config.json inside a checkpoint directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a JSON object")
    return parse_config(raw, source=str(p))


def parse_config(raw: Mapping[str, Any], source: str = "config.json") -> DeepseekV3Config:
    """Validate a config.json mapping; every error names `source` and the offending key."""

    def err(msg: str) -> ConfigError:
        return ConfigError(f"{source}: {msg}")

    def get_int(key: str, minimum: int) -> int:
        if key not in raw:
            raise err(f"missing required key {key!r}")
        v = raw[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise err(f"{key!r} must be an integer, got {v!r}")
        if v < minimum:
            raise err(f"{key!r} must be >= {minimum}, got {v}")
        return v

    def get_float(key: str) -> float:
        if key not in raw:
            raise err(f"missing required key {key!r}")
        v = raw[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise err(f"{key!r} must be a finite number, got {v!r}")
        return float(v)

    def expect(key: str, allowed: tuple[Any, ...], why: str) -> None:
        if key in raw and raw[key] not in allowed:
            raise err(f"{key!r} is {raw[key]!r}; this runtime supports {allowed} ({why})")

    model_type = raw.get("model_type")
    if model_type is not None and model_type != "deepseek_v3":
        raise err(f"model_type is {model_type!r}, expected 'deepseek_v3'")
    quant = parse_quantization_config(raw.get("quantization_config") or None, err)
    expect("hidden_act", ("silu",), "SwiGLU experts")
    expect("attention_bias", (False,), "DeepSeek-V3 projections have no bias")
    expect("moe_layer_freq", (1,), "every layer after first_k_dense_replace is MoE")
    expect("topk_method", ("noaux_tc",), "sigmoid routing with e_score_correction_bias")
    expect("scoring_func", ("sigmoid",), "DeepSeek-V3 routing")

    ints = {k: get_int(k, 1) for k in _REQUIRED_INT}
    ints.update({k: get_int(k, 0) for k in _REQUIRED_NONNEG_INT})
    floats = {k: get_float(k) for k in _REQUIRED_FLOAT}
    if floats["rms_norm_eps"] <= 0:
        raise err(f"'rms_norm_eps' must be > 0, got {floats['rms_norm_eps']}")

    if "q_lora_rank" not in raw:
        raise err("missing required key 'q_lora_rank' (null for a plain q_proj)")
    q_lora_rank = raw["q_lora_rank"]
    if q_lora_rank is not None and (
        isinstance(q_lora_rank, bool) or not isinstance(q_lora_rank, int) or q_lora_rank < 1
    ):
        raise err(f"'q_lora_rank' must be a positive integer or null, got {q_lora_rank!r}")

    norm_topk_prob = raw.get("norm_topk_prob")
    if not isinstance(norm_topk_prob, bool):
        raise err(f"'norm_topk_prob' must be true or false, got {norm_topk_prob!r}")
    nextn = raw.get("num_nextn_predict_layers", 0) or 0
    if isinstance(nextn, bool) or not isinstance(nextn, int) or nextn < 0:
        raise err(f"'num_nextn_predict_layers' must be an integer >= 0, got {nextn!r}")
    tie = raw.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise err(f"'tie_word_embeddings' must be true or false, got {tie!r}")

    # Cross-key consistency.
    if ints["n_routed_experts"] % ints["n_group"]:
        raise err(f"'n_routed_experts' ({ints['n_routed_experts']}) is not divisible by 'n_group' ({ints['n_group']})")
    if ints["topk_group"] > ints["n_group"]:
        raise err(f"'topk_group' ({ints['topk_group']}) exceeds 'n_group' ({ints['n_group']})")
    per_group = ints["n_routed_experts"] // ints["n_group"]
    if per_group < 2:
        raise err(f"each of the 'n_group' groups needs >= 2 experts (its score sums the top two), got {per_group}")
    if ints["num_experts_per_tok"] > ints["topk_group"] * per_group:
        raise err(
            f"'num_experts_per_tok' ({ints['num_experts_per_tok']}) exceeds the experts in 'topk_group' "
            f"groups ({ints['topk_group']} x {per_group})"
        )
    if ints["first_k_dense_replace"] > ints["num_hidden_layers"]:
        raise err(
            f"'first_k_dense_replace' ({ints['first_k_dense_replace']}) exceeds 'num_hidden_layers' "
            f"({ints['num_hidden_layers']})"
        )
    if ints["qk_rope_head_dim"] % 2:
        raise err(f"'qk_rope_head_dim' must be even, got {ints['qk_rope_head_dim']}")
    nkv = raw.get("num_key_value_heads")
    if nkv is not None and nkv != ints["num_attention_heads"]:
        raise err(
            f"'num_key_value_heads' ({nkv}) must equal 'num_attention_heads' ({ints['num_attention_heads']}) for MLA"
        )
    head_dim = raw.get("head_dim")
    if head_dim is not None and head_dim != ints["qk_rope_head_dim"]:
        raise err(f"'head_dim' ({head_dim}) must equal 'qk_rope_head_dim' ({ints['qk_rope_head_dim']})")

    rope = _parse_rope(raw, err)
    return DeepseekV3Config(
        q_lora_rank=q_lora_rank,
        norm_topk_prob=norm_topk_prob,
        scoring_func="sigmoid",
        rope=rope,
        num_nextn_predict_layers=nextn,
        tie_word_embeddings=tie,
        quant=quant,
        **ints,
        **floats,
    )


def _parse_rope(raw: Mapping[str, Any], err) -> RopeConfig:
    """Merge the published (rope_theta/rope_scaling) and new (rope_parameters) layouts, checking agreement."""
    params = raw.get("rope_parameters")
    scaling = raw.get("rope_scaling")
    if params is not None and not isinstance(params, dict):
        raise err(f"'rope_parameters' must be an object, got {params!r}")
    if scaling is not None and not isinstance(scaling, dict):
        raise err(f"'rope_scaling' must be an object or null, got {scaling!r}")

    # Collect each field from every place it may appear, then demand agreement.
    sources: dict[str, list[tuple[str, Any]]] = {}

    def offer(field: str, where: str, value: Any) -> None:
        sources.setdefault(field, []).append((where, value))

    if "rope_theta" in raw:
        offer("theta", "rope_theta", raw["rope_theta"])
    if scaling:
        for key, value in scaling.items():
            field = "rope_type" if key in ("type", "rope_type") else key
            offer(field, f"rope_scaling.{key}", value)
    if params:
        for key, value in params.items():
            field = {"rope_theta": "theta", "type": "rope_type"}.get(key, key)
            offer(field, f"rope_parameters.{key}", value)

    def pick(field: str) -> Any:
        offered = sources.get(field, [])
        if not offered:
            return None
        first_where, first = offered[0]
        for where, value in offered[1:]:
            same = value == first
            if isinstance(value, (int, float)) and isinstance(first, (int, float)) and not isinstance(value, bool):
                same = math.isclose(float(value), float(first), rel_tol=1e-9)
            if not same:
                raise err(f"inconsistent rotary settings: {first_where} is {first!r} but {where} is {value!r}")
        return first

    known = {"theta", "rope_type", "factor", "original_max_position_embeddings", *_YARN_FLOAT_DEFAULTS}
    # HF's rope_parameters may carry partial_rotary_factor etc.; refuse what would change the math.
    for field, offered in sources.items():
        if field not in known:
            where, value = offered[0]
            if field == "partial_rotary_factor" and value == 1.0:
                continue
            raise err(f"unsupported rotary setting {where} = {value!r}")

    theta = pick("theta")
    if theta is None:
        raise err("missing 'rope_theta' (or 'rope_parameters.rope_theta')")
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 1:
        raise err(f"'rope_theta' must be a number > 1, got {theta!r}")

    rope_type = pick("rope_type")
    if rope_type is None:
        # A rope_scaling object without a type is ambiguous; rope_parameters/nothing means default.
        if scaling:
            raise err("'rope_scaling' has no 'type' (or 'rope_type')")
        rope_type = "default"
    if rope_type not in _SUPPORTED_ROPE_TYPES:
        raise err(f"rotary type {rope_type!r} is not supported (supported: {', '.join(_SUPPORTED_ROPE_TYPES)})")

    interleave = raw.get("rope_interleave", True)
    if not isinstance(interleave, bool):
        raise err(f"'rope_interleave' must be true or false, got {interleave!r}")

    if rope_type == "default":
        extra = sorted(f for f in sources if f not in ("theta", "rope_type"))
        if extra:
            raise err(f"rotary type 'default' does not take {', '.join(extra)}")
        return RopeConfig(theta=float(theta), interleave=interleave)

    factor = pick("factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1:
        raise err(f"YaRN needs 'factor' >= 1, got {factor!r}")
    orig = pick("original_max_position_embeddings")
    if isinstance(orig, bool) or not isinstance(orig, int) or orig < 1:
        raise err(f"YaRN needs a positive integer 'original_max_position_embeddings', got {orig!r}")
    floats = {}
    for name, default in _YARN_FLOAT_DEFAULTS.items():
        v = pick(name)
        if v is None:
            v = default
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise err(f"YaRN {name!r} must be a number, got {v!r}")
        floats[name] = float(v)
    if floats["beta_fast"] <= floats["beta_slow"]:
        raise err(f"YaRN 'beta_fast' ({floats['beta_fast']}) must exceed 'beta_slow' ({floats['beta_slow']})")
    return RopeConfig(
        theta=float(theta),
        rope_type="yarn",
        factor=float(factor),
        original_max_position_embeddings=orig,
        interleave=interleave,
        **floats,
    )


def _preset(**over: Any) -> DeepseekV3Config:
    base = dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        q_lora_rank=48,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        scoring_func="sigmoid",
        first_k_dense_replace=1,
        rms_norm_eps=1e-6,
        max_position_embeddings=1024,
        rope=RopeConfig(
            theta=10000.0,
            rope_type="yarn",
            factor=4.0,
            original_max_position_embeddings=256,
            beta_fast=32.0,
            beta_slow=1.0,
            mscale=1.0,
            mscale_all_dim=1.0,
        ),
        num_nextn_predict_layers=1,
    )
    base.update(over)
    return DeepseekV3Config(**base)


PRESETS: dict[str, DeepseekV3Config] = {
    # Three layers (one dense, two MoE), 8 routed experts in 4 groups: every code path, tiny weights.
    "tiny": _preset(),
    # Closer to the real layer mix (3 dense then MoE, 32 experts in 8 groups, top-8) at small widths.
    "small": _preset(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=512,
        moe_intermediate_size=64,
        num_hidden_layers=8,
        num_attention_heads=8,
        q_lora_rank=96,
        kv_lora_rank=64,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
        n_routed_experts=32,
        num_experts_per_tok=8,
        n_group=8,
        topk_group=4,
        first_k_dense_replace=3,
        max_position_embeddings=4096,
        rope=RopeConfig(
            theta=10000.0,
            rope_type="yarn",
            factor=8.0,
            original_max_position_embeddings=512,
            mscale=1.0,
            mscale_all_dim=1.0,
        ),
    ),
}
