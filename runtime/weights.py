"""DeepSeek-V3 checkpoints in Hugging Face safetensors format: the expected tensor set, loading, writing.

Tensor names are exactly those of the published checkpoints (`model.layers.N.self_attn.q_a_proj.weight`,
`model.layers.N.mlp.experts.E.gate_proj.weight`, `model.layers.N.mlp.gate.e_score_correction_bias`, ...).
A checkpoint is one `model.safetensors` or shards listed by `model.safetensors.index.json`.
Multi-token-prediction layers (`model.layers.<num_hidden_layers + i>.*`, i < num_nextn_predict_layers)
are shape-checked when present and then set aside: this runtime does not speculate.
Quantized checkpoints (config.json's `quantization_config`, runtime/quant.py) replace each quantized linear's
`weight` by its layout's tensors, checked by name, shape and dtype the same way; W8A8/A16W4 tensors are returned
in their stored dtypes, FP8 ones dequantized to float32. Float tensors may be F32, F16, F64 or BF16.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from runtime import quant
from runtime.config import DeepseekV3Config
from runtime.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_ACCEPTED_DTYPES = {"F32", "F16", "F64", "BF16"}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")


def _layer_tensors(cfg: DeepseekV3Config, i: int) -> dict[str, tuple[int, ...]]:
    h, n = cfg.hidden_size, cfg.num_attention_heads
    p = f"model.layers.{i}."
    t: dict[str, tuple[int, ...]] = {
        p + "input_layernorm.weight": (h,),
        p + "post_attention_layernorm.weight": (h,),
    }
    a = p + "self_attn."
    if cfg.q_lora_rank is None:
        t[a + "q_proj.weight"] = (n * cfg.qk_head_dim, h)
    else:
        t[a + "q_a_proj.weight"] = (cfg.q_lora_rank, h)
        t[a + "q_a_layernorm.weight"] = (cfg.q_lora_rank,)
        t[a + "q_b_proj.weight"] = (n * cfg.qk_head_dim, cfg.q_lora_rank)
    t[a + "kv_a_proj_with_mqa.weight"] = (cfg.kv_lora_rank + cfg.qk_rope_head_dim, h)
    t[a + "kv_a_layernorm.weight"] = (cfg.kv_lora_rank,)
    t[a + "kv_b_proj.weight"] = (n * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank)
    t[a + "o_proj.weight"] = (h, n * cfg.v_head_dim)
    m = p + "mlp."
    if not cfg.is_moe_layer(i):
        t.update(_swiglu(m, h, cfg.intermediate_size))
        return t
    t[m + "gate.weight"] = (cfg.n_routed_experts, h)
    t[m + "gate.e_score_correction_bias"] = (cfg.n_routed_experts,)
    for e in range(cfg.n_routed_experts):
        t.update(_swiglu(f"{m}experts.{e}.", h, cfg.moe_intermediate_size))
    if cfg.n_shared_experts:
        t.update(_swiglu(m + "shared_experts.", h, cfg.moe_intermediate_size * cfg.n_shared_experts))
    return t


def _swiglu(prefix: str, h: int, inter: int) -> dict[str, tuple[int, ...]]:
    return {
        prefix + "gate_proj.weight": (inter, h),
        prefix + "up_proj.weight": (inter, h),
        prefix + "down_proj.weight": (h, inter),
    }


def expected_tensors(cfg: DeepseekV3Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the main model needs, in a fixed order."""
    t: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.hidden_size)}
    for i in range(cfg.num_hidden_layers):
        t.update(_layer_tensors(cfg, i))
    t["model.norm.weight"] = (cfg.hidden_size,)
    if not cfg.tie_word_embeddings:
        t["lm_head.weight"] = (cfg.vocab_size, cfg.hidden_size)
    return _quantized_shapes(cfg, t)


def mtp_tensors(cfg: DeepseekV3Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the multi-token-prediction layers' tensors (as DeepSeek-V3 publishes them)."""
    h = cfg.hidden_size
    t: dict[str, tuple[int, ...]] = {}
    for k in range(cfg.num_nextn_predict_layers):
        i = cfg.num_hidden_layers + k
        p = f"model.layers.{i}."
        t.update(_layer_tensors(cfg, i))
        t[p + "enorm.weight"] = (h,)
        t[p + "hnorm.weight"] = (h,)
        t[p + "eh_proj.weight"] = (h, 2 * h)
        t[p + "embed_tokens.weight"] = (cfg.vocab_size, h)
        t[p + "shared_head.norm.weight"] = (h,)
        t[p + "shared_head.head.weight"] = (cfg.vocab_size, h)
    return _quantized_shapes(cfg, t)


def _quantized_shapes(cfg: DeepseekV3Config, t: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The float tensor set `t` with each quantized linear's weight replaced by its layout's tensors."""
    if cfg.quant is None:
        return t
    try:
        return quant.quantized_tensor_set(cfg.quant, t)[0]
    except ValueError as e:
        raise CheckpointError(f"config.json's quantization_config does not fit this model: {e}") from None


def quantized_dtypes(cfg: DeepseekV3Config) -> dict[str, str]:
    """Name -> required safetensors dtype of every quantized tensor (main and MTP layers); empty for float."""
    if cfg.quant is None:
        return {}
    plain = replace(cfg, quant=None)
    return {
        **quant.quantized_tensor_set(cfg.quant, expected_tensors(plain))[1],
        **quant.quantized_tensor_set(cfg.quant, mtp_tensors(plain))[1],
    }


@dataclass
class LoadReport:
    """What a load found: files read, tensors used, MTP tensors set aside."""

    files: list[str] = field(default_factory=list)
    loaded: int = 0
    mtp_skipped: int = 0
    mtp_layers_present: list[int] = field(default_factory=list)
    quantization: str | None = None
    """The checkpoint's quantization scheme (runtime/quant.py METHODS), None for float weights."""

    def summary(self) -> str:
        mtp = (
            f"; set aside {self.mtp_skipped} multi-token-prediction tensors of layer(s) "
            f"{', '.join(map(str, self.mtp_layers_present))}"
            if self.mtp_skipped
            else "; no multi-token-prediction layers present"
        )
        q = f" ({self.quantization} weights)" if self.quantization else ""
        return f"loaded {self.loaded} tensors{q} from {len(self.files)} file(s){mtp}"


@contextlib.contextmanager
def _reading(path: Path) -> Iterator:
    """safe_open(path), with any failure to read it (a truncated or corrupt file) as a CheckpointError naming it.

    safetensors checks the header, and that the data it describes is all there, when the file is opened; a read
    can still fail later (an I/O error, a file shortened meanwhile), so reads inside the block are covered too.
    """
    try:
        with safe_open(str(path), framework="np") as f:
            yield f
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({e}); it may be truncated or corrupt: "
            "write it again (or download it again)"
        ) from None


def _tensor_files(ckpt: Path) -> dict[str, Path]:
    """Map each tensor name to the safetensors file holding it (index.json when sharded)."""
    index = ckpt / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' ({e})") from None
        files = {}
        for name, fname in weight_map.items():
            path = ckpt / fname
            if not path.exists():
                raise CheckpointError(f"{index}: tensor {name!r} is mapped to {fname}, which does not exist")
            files[name] = path
        return files
    single = ckpt / SINGLE_NAME
    candidates = [single] if single.exists() else sorted(ckpt.glob("*.safetensors"))
    if not candidates:
        raise CheckpointError(f"{ckpt}: no {SINGLE_NAME} and no {INDEX_NAME}")
    if len(candidates) > 1:
        raise CheckpointError(
            f"{ckpt}: {len(candidates)} .safetensors files but no {INDEX_NAME} to say which holds what"
        )
    with _reading(candidates[0]) as f:
        return {name: candidates[0] for name in f.keys()}


def load_weights(ckpt: str | Path, cfg: DeepseekV3Config) -> tuple[dict[str, np.ndarray], LoadReport]:
    """Read every main-model tensor as float32; raise CheckpointError naming any tensor out of place."""
    ckpt = Path(ckpt)
    expected = expected_tensors(cfg)
    mtp = mtp_tensors(cfg)
    where = _tensor_files(ckpt)
    report = LoadReport(files=sorted({str(p.name) for p in where.values()}))

    for name in where:
        if name in expected or name in mtp:
            continue
        m = _LAYER_RE.match(name)
        hint = ""
        if m and int(m.group(1)) >= cfg.num_hidden_layers:
            hint = (
                f" (layer {m.group(1)} is past num_hidden_layers={cfg.num_hidden_layers} and "
                f"num_nextn_predict_layers={cfg.num_nextn_predict_layers} does not cover it)"
            )
        elif name.endswith("weight_scale_inv"):
            hint = " (an FP8 block scale, but config.json has no FP8 quantization_config)"
        raise CheckpointError(f"{ckpt}: unexpected tensor {name!r} in {where[name].name}{hint}")
    missing = [n for n in expected if n not in where]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{ckpt}: missing tensor {missing[0]!r}{more}")

    by_file: dict[Path, list[str]] = {}
    for name, path in where.items():
        by_file.setdefault(path, []).append(name)
    weights: dict[str, np.ndarray] = {}
    mtp_layers: set[int] = set()
    quant_dtypes = quantized_dtypes(cfg)
    for path, names in sorted(by_file.items()):
        with _reading(path) as f:
            present = set(f.keys())
            for name in names:
                if name not in present:
                    raise CheckpointError(f"{ckpt}: {INDEX_NAME} maps {name!r} to {path.name}, which lacks it")
                sl = f.get_slice(name)
                shape = tuple(sl.get_shape())
                want = expected.get(name) or mtp[name]
                if shape != want:
                    raise CheckpointError(
                        f"{ckpt}: tensor {name!r} in {path.name} has shape {list(shape)}, "
                        f"config.json implies {list(want)}"
                    )
                dtype = sl.get_dtype()
                if name in quant_dtypes:
                    if dtype != quant_dtypes[name]:
                        raise CheckpointError(
                            f"{ckpt}: tensor {name!r} in {path.name} is {dtype}; the {cfg.quant.method} layout "
                            f"stores it as {quant_dtypes[name]}"
                        )
                elif dtype not in _ACCEPTED_DTYPES:
                    raise CheckpointError(
                        f"{ckpt}: tensor {name!r} in {path.name} is {dtype}; this runtime reads F32/F16/F64/BF16 "
                        "float tensors (FP8 weights need an FP8 quantization_config in config.json)"
                    )
                if name in mtp:
                    report.mtp_skipped += 1
                    mtp_layers.add(int(_LAYER_RE.match(name).group(1)))
                    continue
                weights[name] = _read_tensor(f, path, name, dtype, keep=name in quant_dtypes)
    if cfg.quant is not None and cfg.quant.method == "fp8":
        _dequantize_fp8(cfg, weights)
    report.loaded = len(weights)
    report.quantization = None if cfg.quant is None else cfg.quant.method
    report.mtp_layers_present = sorted(mtp_layers)
    return weights, report


def _read_tensor(f, path: Path, name: str, dtype: str, keep: bool) -> np.ndarray:
    """A tensor as float32, or in its stored dtype when `keep` (quantized layouts); BF16 and F8 bytes decoded here."""
    if dtype in ("BF16", "F8_E4M3"):
        a = quant.decode_raw(dtype, quant.read_raw(path, name), tuple(f.get_slice(name).get_shape()))
    else:
        a = f.get_tensor(name)
    return np.ascontiguousarray(a) if keep else np.ascontiguousarray(a, dtype=np.float32)


def _dequantize_fp8(cfg: DeepseekV3Config, weights: dict[str, np.ndarray]) -> None:
    """Replace each FP8 weight and its weight_scale_inv by the float32 weight (FP8 checkpoints run as float)."""
    for base in quant.quantized_linears(cfg.quant, expected_tensors(replace(cfg, quant=None))):
        scale = weights.pop(base + ".weight_scale_inv")
        weights[base + ".weight"] = quant.dequantize_fp8_block(weights[base + ".weight"], scale, cfg.quant.block)


def random_tensors(cfg: DeepseekV3Config, seed: int, include_mtp: bool = True) -> dict[str, np.ndarray]:
    """Random float32 weights scaled so activations stay O(1) through every layer."""
    rng = np.random.default_rng(seed)
    specs = dict(expected_tensors(cfg))
    if include_mtp:
        specs.update(mtp_tensors(cfg))
    out: dict[str, np.ndarray] = {}
    for name, shape in specs.items():
        if name.endswith("e_score_correction_bias"):
            arr = 0.05 * rng.standard_normal(shape)
        elif len(shape) == 1:  # RMSNorm gains
            arr = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith("embed_tokens.weight"):
            arr = rng.standard_normal(shape)
        else:
            arr = rng.standard_normal(shape) / np.sqrt(shape[1])
        out[name] = arr.astype(np.float32)
    return out


def write_checkpoint(
    out: str | Path,
    cfg: DeepseekV3Config,
    tensors: dict[str, np.ndarray],
    shards: int = 1,
    layout: str = "published",
    replace: bool = False,
) -> list[Path]:
    """Write config.json plus one model.safetensors, or `shards` files with an index.

    A directory that already holds a checkpoint is refused unless `replace`; with it, the old checkpoint's files
    are removed first, so no shard or index of the old one is left for a loader to pick up.
    """
    if shards < 1:
        raise CheckpointError(f"shards must be >= 1, got {shards}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a directory; choose a new --out directory")
    old = checkpoint_files(out)
    if old and not replace:
        raise CheckpointError(
            f"{out}: already holds a checkpoint ({', '.join(p.name for p in old)}); refusing to overwrite it: "
            "choose a new --out directory, or pass --force to replace it"
        )
    for p in old:
        p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_hf_dict(layout), indent=2, sort_keys=True) + "\n")
    names = list(tensors)
    written: list[Path] = []
    meta = {"format": "pt"}
    if shards == 1:
        path = out / SINGLE_NAME
        _save(tensors, path, meta)
        return [out / "config.json", path]
    total = sum(a.nbytes for a in tensors.values())
    weight_map: dict[str, str] = {}
    groups: list[list[str]] = [[] for _ in range(shards)]
    acc = 0
    for name in names:
        groups[min(shards - 1, acc * shards // max(total, 1))].append(name)
        acc += tensors[name].nbytes
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        _save({n: tensors[n] for n in group}, out / fname, meta)
        weight_map.update({n: fname for n in group})
        written.append(out / fname)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return [out / "config.json", *written, out / INDEX_NAME]


def checkpoint_files(ckpt: str | Path) -> list[Path]:
    """The files of a checkpoint in `ckpt` (config.json, the index, every .safetensors), in name order."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        return []
    return sorted(
        p for p in ckpt.iterdir() if p.name in ("config.json", INDEX_NAME) or p.suffix == ".safetensors"
    )


def _save(tensors: dict, path: Path, meta: dict[str, str]) -> None:
    """safetensors.numpy's writer, or runtime.quant's for tensors NumPy has no dtype for (FP8)."""
    if any(isinstance(t, quant.RawTensor) for t in tensors.values()):
        quant.save_safetensors(tensors, path, meta)
    else:
        save_file(tensors, str(path), metadata=meta)


def checkpoint_digest(ckpt: str | Path) -> str:
    """sha256 over config.json, the index and every safetensors file (names and bytes), in name order."""
    h = hashlib.sha256()
    for p in checkpoint_files(ckpt):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
