"""runtime.config: both rotary layouts, consistency checks, clear errors naming the key."""

import json

import pytest

from runtime.config import PRESETS, load_config, parse_config
from runtime.errors import ConfigError

# DeepSeek-V3's published config.json (architecture keys; the FP8 quantization_config left out).
V3_PUBLISHED = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "vocab_size": 129280,
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 61,
    "num_nextn_predict_layers": 1,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "n_shared_experts": 1,
    "n_routed_experts": 256,
    "routed_scaling_factor": 2.5,
    "kv_lora_rank": 512,
    "q_lora_rank": 1536,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "qk_nope_head_dim": 128,
    "topk_method": "noaux_tc",
    "n_group": 8,
    "topk_group": 4,
    "num_experts_per_tok": 8,
    "moe_layer_freq": 1,
    "first_k_dense_replace": 3,
    "norm_topk_prob": True,
    "scoring_func": "sigmoid",
    "hidden_act": "silu",
    "max_position_embeddings": 163840,
    "rms_norm_eps": 1e-06,
    "tie_word_embeddings": False,
    "rope_theta": 10000,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
    "attention_bias": False,
    "torch_dtype": "bfloat16",
}


def new_layout(d):
    d = dict(d)
    scaling = d.pop("rope_scaling")
    scaling = {("rope_type" if k == "type" else k): v for k, v in scaling.items()}
    d["rope_parameters"] = {"rope_theta": d.pop("rope_theta"), **scaling}
    d["rope_interleave"] = True
    return d


def test_published_v3_config_parses():
    cfg = parse_config(V3_PUBLISHED)
    assert cfg.qk_head_dim == 192 and cfg.latent_dim == 576
    assert cfg.rope.rope_type == "yarn" and cfg.rope.factor == 40 and cfg.rope.interleave
    assert cfg.is_moe_layer(3) and not cfg.is_moe_layer(2)
    # softmax scale carries YaRN's mscale_all_dim correction squared
    assert cfg.softmax_scale == pytest.approx(192**-0.5 * (0.1 * __import__("math").log(40) + 1) ** 2)


def test_both_layouts_give_the_same_model():
    assert parse_config(new_layout(V3_PUBLISHED)) == parse_config(V3_PUBLISHED)


def test_both_layouts_in_one_file_must_agree():
    both = {**V3_PUBLISHED, **{k: v for k, v in new_layout(V3_PUBLISHED).items() if k.startswith("rope_")}}
    assert parse_config(both) == parse_config(V3_PUBLISHED)
    both["rope_parameters"] = {**both["rope_parameters"], "factor": 8}
    with pytest.raises(ConfigError, match=r"rope_scaling.factor is 40 but rope_parameters.factor is 8"):
        parse_config(both)
    theta = {**both, "rope_parameters": {**new_layout(V3_PUBLISHED)["rope_parameters"], "rope_theta": 50000}}
    with pytest.raises(ConfigError, match="rope_theta"):
        parse_config(theta)


def test_new_layout_without_interleave_and_default_rope():
    d = new_layout(V3_PUBLISHED)
    d["rope_interleave"] = False
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    cfg = parse_config(d)
    assert cfg.rope.rope_type == "default" and not cfg.rope.interleave
    assert cfg.softmax_scale == pytest.approx(192**-0.5)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_size": None}, "'hidden_size' must be an integer"),
        ({"n_group": 7}, "'n_routed_experts' \\(256\\) is not divisible by 'n_group' \\(7\\)"),
        ({"topk_group": 9}, "'topk_group' \\(9\\) exceeds 'n_group'"),
        ({"num_experts_per_tok": 200}, "'num_experts_per_tok' \\(200\\) exceeds"),
        ({"first_k_dense_replace": 62}, "'first_k_dense_replace'"),
        ({"qk_rope_head_dim": 63}, "'qk_rope_head_dim' must be even"),
        ({"scoring_func": "softmax"}, "'scoring_func' is 'softmax'"),
        ({"norm_topk_prob": "yes"}, "'norm_topk_prob' must be true or false"),
        ({"num_key_value_heads": 1}, "'num_key_value_heads'"),
        ({"model_type": "llama"}, "model_type is 'llama'"),
        ({"quantization_config": {"quant_method": "fp8"}}, "quantization_config"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rotary type 'dynamic' is not supported"),
        ({"rope_scaling": {"type": "yarn", "original_max_position_embeddings": 4096}}, "YaRN needs 'factor'"),
        ({"rope_scaling": {"factor": 4.0}}, "'rope_scaling' has no 'type'"),
        ({"rope_theta": "big"}, "'rope_theta' must be a number"),
        ({"rms_norm_eps": 0}, "'rms_norm_eps' must be > 0"),
    ],
)
def test_bad_values_are_errors_naming_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({**V3_PUBLISHED, **change}, source="x/config.json")


def test_missing_key_names_file_and_key(tmp_path):
    d = dict(V3_PUBLISHED)
    del d["kv_lora_rank"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=rf"{tmp_path}/config.json: missing required key 'kv_lora_rank'"):
        load_config(tmp_path)
    d = dict(V3_PUBLISHED)
    del d["rope_theta"]
    del d["rope_scaling"]
    with pytest.raises(ConfigError, match="missing 'rope_theta'"):
        parse_config(d)


def test_not_json_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(tmp_path)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("layout", ["published", "parameters"])
def test_presets_round_trip_through_config_json(preset, layout):
    cfg = PRESETS[preset]
    assert parse_config(json.loads(json.dumps(cfg.to_hf_dict(layout)))) == cfg


def test_q_lora_rank_may_be_null():
    cfg = parse_config({**V3_PUBLISHED, "q_lora_rank": None})
    assert cfg.q_lora_rank is None


def test_runtime_never_imports_buildsys_or_perf():
    """The build engine runs workloads in a rebuilt interpreter: runtime/ must stand alone."""
    import ast
    import pathlib

    import runtime

    for path in pathlib.Path(runtime.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in ("buildsys", "perf"), f"{path.name} imports {n}"
