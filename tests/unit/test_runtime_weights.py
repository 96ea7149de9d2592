"""runtime.weights: expected tensor set, sharded/unsharded loading, errors naming the tensor."""

import json

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("safetensors")
from safetensors.numpy import save_file  # noqa: E402

from runtime.config import PRESETS, parse_config  # noqa: E402
from runtime.errors import CheckpointError  # noqa: E402
from runtime.weights import INDEX_NAME, expected_tensors, load_weights, mtp_tensors, random_tensors, write_checkpoint  # noqa: E402

CFG = PRESETS["tiny"]


def test_expected_names_follow_hf_deepseek_v3():
    names = expected_tensors(CFG)
    assert names["model.layers.0.mlp.gate_proj.weight"] == (128, 64)  # dense first layer
    assert "model.layers.0.mlp.gate.weight" not in names
    assert names["model.layers.1.self_attn.q_a_proj.weight"] == (48, 64)
    assert names["model.layers.1.self_attn.kv_a_proj_with_mqa.weight"] == (32 + 8, 64)
    assert names["model.layers.1.self_attn.kv_b_proj.weight"] == (4 * (16 + 16), 32)
    assert names["model.layers.2.mlp.experts.7.down_proj.weight"] == (64, 32)
    assert names["model.layers.2.mlp.gate.e_score_correction_bias"] == (8,)
    assert names["model.layers.2.mlp.shared_experts.up_proj.weight"] == (32, 64)
    assert "model.layers.3.eh_proj.weight" in mtp_tensors(CFG)
    assert not any(n.startswith("model.layers.3.") for n in names)


@pytest.fixture(scope="module")
def tensors():
    return random_tensors(CFG, 0)


@pytest.mark.parametrize("shards", [1, 3])
def test_load_round_trip(tmp_path, tensors, shards):
    write_checkpoint(tmp_path, CFG, tensors, shards=shards)
    assert (tmp_path / INDEX_NAME).exists() == (shards > 1)
    w, report = load_weights(tmp_path, CFG)
    assert set(w) == set(expected_tensors(CFG))
    assert np.array_equal(
        w["model.layers.2.mlp.experts.3.up_proj.weight"], tensors["model.layers.2.mlp.experts.3.up_proj.weight"]
    )
    assert report.mtp_skipped == len(mtp_tensors(CFG)) and report.mtp_layers_present == [3]
    assert len(report.files) == shards


def test_mtp_layers_may_be_absent(tmp_path, tensors):
    write_checkpoint(tmp_path, CFG, {k: v for k, v in tensors.items() if k in expected_tensors(CFG)})
    _, report = load_weights(tmp_path, CFG)
    assert report.mtp_skipped == 0 and "no multi-token-prediction" in report.summary()


def _write(tmp_path, tensors):
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_hf_dict()))
    save_file(tensors, str(tmp_path / "model.safetensors"))


def test_missing_tensor_is_named(tmp_path, tensors):
    t = dict(tensors)
    del t["model.layers.1.self_attn.kv_a_layernorm.weight"]
    _write(tmp_path, t)
    with pytest.raises(CheckpointError, match=r"missing tensor 'model.layers.1.self_attn.kv_a_layernorm.weight'"):
        load_weights(tmp_path, CFG)


def test_unexpected_tensor_is_named(tmp_path, tensors):
    _write(tmp_path, {**tensors, "model.layers.1.self_attn.rotary_emb.inv_freq": np.zeros(4, np.float32)})
    with pytest.raises(
        CheckpointError, match=r"unexpected tensor 'model.layers.1.self_attn.rotary_emb.inv_freq' in model.safetensors"
    ):
        load_weights(tmp_path, CFG)


def test_mtp_layer_beyond_config_is_unexpected(tmp_path, tensors):
    cfg = parse_config({**CFG.to_hf_dict(), "num_nextn_predict_layers": 0})
    _write(tmp_path, tensors)
    with pytest.raises(CheckpointError, match=r"layer 3 is past num_hidden_layers=3"):
        load_weights(tmp_path, cfg)


def test_misshaped_tensor_is_named(tmp_path, tensors):
    _write(tmp_path, {**tensors, "model.layers.2.mlp.experts.5.gate_proj.weight": np.zeros((33, 64), np.float32)})
    with pytest.raises(
        CheckpointError,
        match=(r"'model.layers.2.mlp.experts.5.gate_proj.weight' in model.safetensors has shape \[33, 64\], "
               r"config.json implies \[32, 64\]"),
    ):
        load_weights(tmp_path, CFG)


def test_wrong_dtype_is_named(tmp_path, tensors):
    _write(tmp_path, {**tensors, "model.norm.weight": np.ones(64, np.int32)})
    with pytest.raises(CheckpointError, match=r"'model.norm.weight' in model.safetensors is I32"):
        load_weights(tmp_path, CFG)


def test_index_pointing_at_missing_shard(tmp_path, tensors):
    write_checkpoint(tmp_path, CFG, tensors, shards=2)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"mapped to model-00002-of-00002.safetensors, which does not exist"):
        load_weights(tmp_path, CFG)


def test_float16_is_read_as_float32(tmp_path, tensors):
    _write(tmp_path, {k: v.astype(np.float16) for k, v in tensors.items()})
    w, _ = load_weights(tmp_path, CFG)
    assert w["lm_head.weight"].dtype == np.float32


def test_no_safetensors_at_all(tmp_path):
    with pytest.raises(CheckpointError, match="no model.safetensors and no model.safetensors.index.json"):
        load_weights(tmp_path, CFG)


def _header_len(path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


@pytest.mark.parametrize("where", ["inside the length", "inside the header", "after the header"])
def test_truncated_file_is_a_checkpoint_error_naming_it(tmp_path, tensors, where):
    write_checkpoint(tmp_path, CFG, tensors)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    keep = {"inside the length": 5, "inside the header": _header_len(path) // 2, "after the header": len(data) - 100}
    path.write_bytes(data[: keep[where]])
    with pytest.raises(CheckpointError, match=rf"^{path}: not a readable safetensors file .*truncated or corrupt"):
        load_weights(tmp_path, CFG)


def test_truncated_shard_is_named(tmp_path, tensors):
    write_checkpoint(tmp_path, CFG, tensors, shards=2)
    shard = tmp_path / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=rf"^{shard}: not a readable safetensors file"):
        load_weights(tmp_path, CFG)


def test_existing_checkpoint_is_replaced_only_when_asked(tmp_path, tensors):
    write_checkpoint(tmp_path, CFG, tensors, shards=2)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CheckpointError, match=r"already holds a checkpoint \(config.json, model-00001.*--force"):
        write_checkpoint(tmp_path, CFG, tensors)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing touched
    write_checkpoint(tmp_path, CFG, tensors, replace=True)
    # The old shards and index are gone: a loader must not pick them up instead of the new single file.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert load_weights(tmp_path, CFG)[1].files == ["model.safetensors"]


def test_shards_below_one_are_refused(tmp_path, tensors):
    with pytest.raises(CheckpointError, match="shards must be >= 1, got 0"):
        write_checkpoint(tmp_path, CFG, tensors, shards=0)
    assert not any(tmp_path.iterdir())
