"""runtime.quant / quant_linear: layouts, packing, round trips, loader errors, per-call linears and logits vs float."""

import json
from dataclasses import replace

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("safetensors")

# Deliberately after the importorskip calls: without NumPy or safetensors the module is skipped before the runtime
# modules (which need them) are imported.
from runtime import quant as Q  # noqa: E402
from runtime.config import PRESETS, load_config, parse_config  # noqa: E402
from runtime.errors import CheckpointError, ConfigError  # noqa: E402
from runtime.weights import (  # noqa: E402
    expected_tensors,
    load_weights,
    random_tensors,
    write_checkpoint,
)

CFG = PRESETS["tiny"]
W8A8, A16W4, FP8 = Q.QuantConfig("w8a8"), Q.QuantConfig("a16w4"), Q.QuantConfig("fp8")


# -- packing and round trips (NumPy only) ---------------------------------------------------------------------
def test_gptq_packs_eight_codes_per_int32_low_bits_first():
    codes = np.array([[1], [2], [3], [4], [5], [6], [7], [8], [0], [0], [0], [0], [0], [0], [0], [15]])
    packed = Q.pack_int4(codes, axis=0)
    assert packed.dtype == np.int32 and packed.shape == (2, 1)
    assert packed.view(np.uint32)[:, 0].tolist() == [0x87654321, 0xF0000000]
    assert np.array_equal(Q.unpack_int4(packed, axis=0), codes)
    # qzeros pack along the output dimension the same way
    zeros = np.array([[8, 8, 8, 8, 8, 8, 8, 7]])
    assert Q.pack_int4(zeros, axis=1).view(np.uint32).tolist() == [[0x78888888]]
    assert np.array_equal(Q.unpack_int4(Q.pack_int4(zeros, axis=1), axis=1), zeros)


def test_gptq_round_trip_and_v1_zero_points():
    w = np.random.default_rng(0).standard_normal((16, 96)).astype(np.float32)  # [out, in]: two groups, the last partial
    t = Q.quantize_gptq(w, 64)
    assert t["qweight"].shape == (12, 16) and t["qzeros"].shape == (2, 2) and t["scales"].dtype == np.float16
    assert t["g_idx"].tolist() == [0] * 64 + [1] * 32
    assert np.all(t["qzeros"].view(np.uint32) == 0x77777777)  # symmetric zero 8, stored minus one (GPTQ v1)
    back = Q.dequantize_linear(A16W4, "gptq", t)
    step = t["scales"].astype(np.float32)[t["g_idx"]].T  # [out, in]
    # +1%: a group's largest |w| may sit 7.5 steps out (float16 scales)
    assert np.all(np.abs(back - w) <= 0.5 * step * 1.01)
    v2 = Q.dequantize_linear(replace(A16W4, zero_offset=0), "gptq", Q.quantize_gptq(w, 64, zero_offset=0))
    assert np.array_equal(v2, back)


def test_w8a8_round_trips():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((24, 40)).astype(np.float32)
    d = Q.quantize_w8a8_dynamic(w)
    assert d["weight"].dtype == np.int8 and d["weight_scale"].shape == (24, 1) and not d["weight_offset"].any()
    assert np.all(np.abs(Q.dequantize_linear(W8A8, "dynamic", d) - w) <= 0.5 * d["weight_scale"] + 1e-6)
    s = Q.quantize_w8a8_static(w, -3.0, 5.0)
    assert s["input_scale"][0] == pytest.approx(8.0 / 255.0)
    offset = s["input_offset"][0]
    assert offset == np.rint(-128 + 3.0 / s["input_scale"][0])  # x = -3 maps to code -128
    assert np.array_equal(s["quant_bias"], -int(offset) * s["weight"].astype(np.int64).sum(axis=1))
    w_scale = np.abs(w).max(axis=1) / 127.0
    assert np.allclose(s["deq_scale"], s["input_scale"][0] * w_scale, rtol=1e-6)
    assert np.all(np.abs(Q.dequantize_linear(W8A8, "static", s) - w) <= 0.5 * w_scale[:, None] + 1e-6)


def test_fp8_block_dequantization_of_a_hand_made_tensor():
    assert Q.E4M3_VALUES[0x38] == 1.0 and Q.E4M3_VALUES[0x40] == 2.0 and Q.E4M3_VALUES[0xB8] == -1.0
    assert Q.E4M3_VALUES[0x7E] == 448.0 and Q.E4M3_VALUES[0x01] == 2.0**-9 and np.isnan(Q.E4M3_VALUES[0x7F])
    codes = np.array([[0x38, 0x40, 0xB8], [0x7E, 0x01, 0x00], [0x38, 0x38, 0x38]], np.uint8)  # [3, 3]
    scale_inv = np.array([[2.0, 3.0], [0.5, 0.25]], np.float32)  # 2x2 blocks: rows {0,1},{2}; cols {0,1},{2}
    got = Q.dequantize_fp8_block(codes, scale_inv, (2, 2))
    want = [[2.0, 4.0, -3.0], [896.0, 2.0**-8, 0.0], [0.5, 0.5, 0.25]]
    assert got.tolist() == want


def test_fp8_round_trip_is_within_half_a_mantissa_step():
    w = np.random.default_rng(2).standard_normal((130, 200)).astype(np.float32)
    t = Q.quantize_fp8_block(w)
    assert t["weight_scale_inv"].shape == (2, 2)
    back = Q.dequantize_fp8_block(t["weight"], t["weight_scale_inv"])
    normal = np.abs(w) > 2.0**-6 * t["weight_scale_inv"].max()
    assert np.all(np.abs(back - w)[normal] <= 2.0**-4 * np.abs(w)[normal] * 1.0001)


# -- layouts and config ----------------------------------------------------------------------------------------
def test_w8a8_layout_names_and_shapes():
    names = expected_tensors(replace(CFG, quant=W8A8))
    o = "model.layers.1.self_attn.o_proj."
    assert {n: names[n] for n in names if n.startswith(o)} == {
        o + "weight": (64, 64),
        o + "deq_scale": (64,),
        o + "quant_bias": (64,),
        o + "input_scale": (1,),
        o + "input_offset": (1,),
    }
    assert names["model.layers.0.mlp.down_proj.quant_bias"] == (64,)  # the dense layer's MLP is static too
    e = "model.layers.2.mlp.experts.7.down_proj."
    assert {n: names[n] for n in names if n.startswith(e)} == {
        e + "weight": (64, 32),
        e + "weight_scale": (64, 1),
        e + "weight_offset": (64, 1),
    }
    assert "model.layers.2.mlp.shared_experts.up_proj.weight_scale" in names
    for float_name in ("model.layers.1.self_attn.kv_b_proj.weight", "model.layers.1.mlp.gate.weight", "lm_head.weight"):
        assert names[float_name] == expected_tensors(CFG)[float_name]
        assert float_name.replace(".weight", ".deq_scale") not in names
    _, dtypes = Q.quantized_tensor_set(W8A8, expected_tensors(CFG))
    assert dtypes[o + "weight"] == "I8" and dtypes[o + "quant_bias"] == "I32" and dtypes[e + "weight_scale"] == "F32"


def test_gptq_layout_shapes():
    names = expected_tensors(replace(CFG, quant=A16W4))
    q = "model.layers.1.self_attn.q_b_proj."  # [96, 48]: in 48 < group 64, one partial group
    assert [names[q + s] for s in ("qweight", "qzeros", "scales", "g_idx")] == [(6, 96), (1, 12), (1, 96), (48,)]
    assert names["model.layers.0.mlp.down_proj.qweight"] == (16, 64)  # in 128: two groups
    assert names["model.layers.0.mlp.down_proj.scales"] == (2, 64)
    assert q + "weight" not in names


def test_quantization_config_parsing():
    base = CFG.to_hf_dict()
    for qc in (W8A8, A16W4, FP8):
        assert parse_config({**base, "quantization_config": qc.to_hf_dict()}).quant == qc
    assert parse_config({**base, "quantization_config": {}}).quant is None
    deepseek = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
    assert parse_config({**base, "quantization_config": deepseek}).quant == FP8
    for bad, match in (
        ({"quant_method": "awq"}, "quant_method' is 'awq'"),
        ({**A16W4.to_hf_dict(), "bits": 8}, "quantization_config.bits' is 8"),
        ({**A16W4.to_hf_dict(), "group_size": 60}, "group_size' must be a positive multiple of 8"),
        ({**deepseek, "weight_block_size": None}, "weight_block_size"),
    ):
        with pytest.raises(ConfigError, match=match):
            parse_config({**base, "quantization_config": bad}, source="x/config.json")


# -- loading ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def float_tensors():
    return random_tensors(CFG, 0)


def _write(path, cfg, tensors):
    write_checkpoint(path, cfg, tensors, replace=True)  # tests rewrite one directory on purpose
    return path


def _fake_quantized(qc):
    """Tensors of the right names, shapes and dtypes without running the quantizer (no MindSpore needed)."""
    shapes, dtypes = Q.quantized_tensor_set(qc, {**expected_tensors(CFG)})
    np_dtypes = {"I8": np.int8, "I32": np.int32, "F16": np.float16, "F32": np.float32}
    out = {}
    for name, shape in shapes.items():
        dt = dtypes.get(name, "F32")
        out[name] = (Q.RawTensor(dt, shape, bytes(int(np.prod(shape)))) if dt == "F8_E4M3"
                     else np.ones(shape, np_dtypes[dt]))
    return out


def test_quantized_checkpoint_loads_with_its_dtypes(tmp_path):
    _write(tmp_path, replace(CFG, quant=A16W4), _fake_quantized(A16W4))
    cfg = load_config(tmp_path)
    assert cfg.quant == A16W4
    w, report = load_weights(tmp_path, cfg)
    assert w["model.layers.1.self_attn.o_proj.qweight"].dtype == np.int32
    assert w["model.layers.1.self_attn.o_proj.scales"].dtype == np.float16
    assert w["model.layers.1.self_attn.kv_b_proj.weight"].dtype == np.float32
    assert report.quantization == "a16w4" and "(a16w4 weights)" in report.summary()


@pytest.mark.parametrize(
    ("qc", "name", "bad", "match"),
    [
        (A16W4, "model.layers.2.mlp.experts.3.up_proj.qweight", np.ones((4, 32), np.int32),
         (r"tensor 'model\.layers\.2\.mlp\.experts\.3\.up_proj\.qweight' in model\.safetensors has shape \[4, 32\], "
          r"config\.json implies \[8, 32\]")),
        (A16W4, "model.layers.1.self_attn.o_proj.scales", np.ones((1, 64), np.float32),
         (r"'model\.layers\.1\.self_attn\.o_proj\.scales' in model\.safetensors is F32; "
          r"the a16w4 layout stores it as F16")),
        (W8A8, "model.layers.1.self_attn.q_a_proj.weight", np.ones((48, 64), np.float32),
         r"q_a_proj\.weight' in model\.safetensors is F32; the w8a8 layout stores it as I8"),
        (W8A8, "model.layers.0.mlp.up_proj.quant_bias", np.ones((129,), np.int32),
         r"up_proj\.quant_bias' .* has shape \[129\]"),
    ],
)
def test_loader_errors_name_tensor_and_file(tmp_path, qc, name, bad, match):
    tensors = _fake_quantized(qc)
    tensors[name] = bad
    _write(tmp_path, replace(CFG, quant=qc), tensors)
    with pytest.raises(CheckpointError, match=match):
        load_weights(tmp_path, load_config(tmp_path))


def test_fp8_tensors_need_an_fp8_config(tmp_path, float_tensors):
    main = {k: v for k, v in float_tensors.items() if k in expected_tensors(CFG)}
    main["model.layers.1.self_attn.o_proj.weight"] = Q.RawTensor("F8_E4M3", (64, 64), bytes(64 * 64))
    _write(tmp_path, CFG, main)
    with pytest.raises(CheckpointError,
                       match=r"o_proj\.weight' in model\.safetensors is F8_E4M3; .*FP8 quantization_config"):
        load_weights(tmp_path, CFG)
    main["model.layers.1.self_attn.o_proj.weight"] = float_tensors["model.layers.1.self_attn.o_proj.weight"]
    main["model.layers.1.self_attn.o_proj.weight_scale_inv"] = np.ones((1, 1), np.float32)
    _write(tmp_path, CFG, main)
    with pytest.raises(CheckpointError, match="weight_scale_inv' in model.safetensors \\(an FP8 block scale"):
        load_weights(tmp_path, CFG)


def test_fp8_and_bf16_checkpoint_loads_dequantized(tmp_path, float_tensors):
    main = {k: v for k, v in float_tensors.items() if k in expected_tensors(CFG)}
    tensors = {}
    for name, a in main.items():
        base = name[: -len(".weight")]
        if base in Q.quantized_linears(FP8, expected_tensors(CFG)):
            t = Q.quantize_fp8_block(a)
            tensors[name] = Q.RawTensor("F8_E4M3", a.shape, t["weight"].tobytes())
            tensors[base + ".weight_scale_inv"] = t["weight_scale_inv"]
        elif a.ndim == 1:  # norms as bfloat16, as DeepSeek publishes them
            bits = (a.view(np.uint32) >> 16).astype(np.uint16)
            tensors[name] = Q.RawTensor("BF16", a.shape, bits.tobytes())
        else:
            tensors[name] = a
    _write(tmp_path, replace(CFG, quant=FP8), tensors)
    cfg = load_config(tmp_path)
    w, report = load_weights(tmp_path, cfg)
    assert set(w) == set(expected_tensors(CFG)) and not any(n.endswith("scale_inv") for n in w)
    kv_b = "model.layers.2.self_attn.kv_b_proj.weight"
    assert w[kv_b].dtype == np.float32 and np.allclose(w[kv_b], main[kv_b], rtol=2.0**-4, atol=1e-4)
    norm = "model.layers.1.input_layernorm.weight"
    assert np.allclose(w[norm], main[norm], rtol=2.0**-7)
    assert report.quantization == "fp8"


# -- MindSpore: per-call linears, checkpoints, logits ----------------------------------------------------------
ms = pytest.importorskip("mindspore")


@pytest.mark.runtime
def test_per_call_linears_match_integer_math():
    from runtime import kernels as K
    from runtime.quant_linear import GPTQLinear, W8A8DynamicLinear, W8A8StaticLinear

    K.configure()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    w = (rng.standard_normal((40, 64)) / 8).astype(np.float32)
    xt = K.to_device(x)

    s = Q.quantize_w8a8_static(w, float(x.min()), float(x.max()))
    xq = np.clip(np.rint(x / s["input_scale"][0] + s["input_offset"][0]), -128, 127).astype(np.int64)
    want = (xq @ s["weight"].T.astype(np.int64) + s["quant_bias"]) * s["deq_scale"]
    got = K.to_host(W8A8StaticLinear(s)(xt))
    assert np.allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.abs(got - x @ w.T).max() < 0.05 * np.abs(x @ w.T).max()

    d = Q.quantize_w8a8_dynamic(w)
    tok = np.abs(x).max(axis=1, keepdims=True) / 127.0
    want = (np.rint(x / tok).astype(np.int64) @ d["weight"].T.astype(np.int64)) * tok * d["weight_scale"].T
    assert np.allclose(K.to_host(W8A8DynamicLinear(d)(xt)), want, rtol=1e-5, atol=1e-6)

    g = Q.quantize_gptq(w, 64)
    want = x @ Q.dequantize_linear(A16W4, "gptq", g).T
    d0 = K.dispatches()
    got = K.to_host(GPTQLinear(A16W4, g)(xt))
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert K.dispatches() - d0 == 13  # unpack codes (3) and zeros (4, with v1 +1), 2 gathers, centre, scale, matmul


@pytest.mark.runtime
def test_wide_w8a8_linears_take_the_int32_path():
    from runtime import kernels as K
    from runtime.quant_linear import (
        W8A8DynamicLinear,
        W8A8StaticLinear,
        exact_in_float32,
    )

    K.configure()
    assert exact_in_float32(1032) and not exact_in_float32(1033)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 2048)).astype(np.float32)
    w = (rng.standard_normal((16, 2048)) / 45).astype(np.float32)
    s = Q.quantize_w8a8_static(w, float(x.min()), float(x.max()))
    static = W8A8StaticLinear(s)
    assert not static.exact_float and K.to_host(static.weight).dtype == np.int32
    xq = np.clip(np.rint(x / s["input_scale"][0] + s["input_offset"][0]), -128, 127).astype(np.int64)
    want = (xq @ s["weight"].T.astype(np.int64) + s["quant_bias"]) * s["deq_scale"]
    assert np.allclose(K.to_host(static(K.to_device(x))), want, rtol=1e-6, atol=1e-6)
    d = Q.quantize_w8a8_dynamic(w)
    tok = np.abs(x).max(axis=1, keepdims=True) / 127.0
    want = (np.rint(x / tok).astype(np.int64) @ d["weight"].T.astype(np.int64)) * tok * d["weight_scale"].T
    assert np.allclose(K.to_host(W8A8DynamicLinear(d)(K.to_device(x))), want, rtol=1e-5, atol=1e-6)


QUANT_LOGITS_TOLERANCE = {"w8a8": 0.75, "a16w4": 1.1, "fp8": 1.1}
"""max|quantized - float| / max|float| accepted over the tiny preset's logits (measured: 0.49, 0.88, 0.89; the random
tiny model amplifies any weight perturbation: 1% noise on its projections moves logits by about 0.9 of max|float|)."""
TOP1_FLOOR = {"w8a8": 0.8, "a16w4": 0.25, "fp8": 0.55}
"""Least share of the 40 positions whose argmax matches the float model's (measured: 0.9, 0.35, 0.675)."""


@pytest.mark.runtime
@pytest.mark.parametrize("method", ["w8a8", "a16w4", "fp8"])
def test_quantized_logits_vs_float(tmp_path, float_tensors, method):
    from runtime import kernels as K
    from runtime.cli import main
    from runtime.model import DeepseekV3Model, contiguous_batch

    assert main(["checkpoint", "--out", str(tmp_path), "--quant", method]) == 0
    cfg = load_config(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"] == cfg.quant.to_hf_dict()
    weights, _ = load_weights(tmp_path, cfg)
    tokens = np.random.default_rng(5).integers(0, cfg.vocab_size, 40)
    ref = K.to_host(DeepseekV3Model(CFG, float_tensors, 64).forward(contiguous_batch(tokens, 0)))
    got = K.to_host(DeepseekV3Model(cfg, weights, 64).forward(contiguous_batch(tokens, 0)))
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert rel <= QUANT_LOGITS_TOLERANCE[method]
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= TOP1_FLOOR[method]
    if method == "a16w4":  # per call the same math as the float model on the dequantized weights
        deq = Q.dequantize_weights(cfg.quant, expected_tensors(CFG), weights)
        same = K.to_host(DeepseekV3Model(CFG, deq, 64).forward(contiguous_batch(tokens, 0)))
        assert np.abs(got - same).max() <= 1e-5 * np.abs(same).max()


@pytest.mark.runtime
def test_verify_a16w4_and_refuse_w8a8(tmp_path, capsys):
    from runtime.cli import main

    assert main(["checkpoint", "--out", str(tmp_path / "g"), "--quant", "a16w4", "--no-mtp"]) == 0
    assert main(["verify", "--checkpoint", str(tmp_path / "g"), "--prompt-len", "12", "--decode", "1"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["checkpoint", "--out", str(tmp_path / "w"), "--quant", "w8a8", "--no-mtp"]) == 0
    assert main(["verify", "--checkpoint", str(tmp_path / "w")]) == 2
    assert "W8A8 quantizes activations" in capsys.readouterr().err


@pytest.mark.runtime
@pytest.mark.parametrize("method", ["w8a8", "a16w4"])
def test_graph_mode_runs_the_quantized_arithmetic_as_eager_does(float_tensors, method):
    from runtime import kernels as K
    from runtime.engine import EngineConfig, LLMEngine, build_model
    from runtime.graph import GRAPH_LOGITS_TOLERANCE
    from runtime.quant_linear import quantize_checkpoint
    from runtime.sampling import SamplingParams
    from runtime.scheduler import SchedulerConfig

    main = {k: v for k, v in float_tensors.items() if k in expected_tensors(CFG)}
    cfg, tensors = quantize_checkpoint(CFG, main, method)
    logits = {}
    tokens = {}
    for mode in ("eager", "graph"):
        ec = EngineConfig(block_size=8, num_blocks=10, scheduler=SchedulerConfig(16, 2), mode=mode, max_model_len=40,
                          token_buckets=(2, 16))
        eng = LLMEngine(build_model(cfg, tensors, ec), ec)
        eng.compile_graphs()
        seen: list = []

        def recording(lg, params, rngs, sample=eng.sampler, seen=seen):
            seen.append(K.to_host(lg)[: len(params)])
            return sample(lg, params, rngs)

        eng.sampler = recording
        rng = np.random.default_rng(4)
        for i, n in enumerate((11, 6)):
            eng.add_request(f"q{i}", [int(t) for t in rng.integers(0, CFG.vocab_size, n)], SamplingParams(max_tokens=5))
        tokens[mode] = [o.tokens for o in eng.run_to_completion()]
        eng.blocks.assert_no_leaks()
        logits[mode] = seen
        assert eng.graphs_compiled == (3 if mode == "graph" else 0)  # two token buckets and the sampler
    assert tokens["graph"] == tokens["eager"]
    worst = max(float(np.abs(g - e).max() / np.abs(e).max())
                for e, g in zip(logits["eager"], logits["graph"], strict=True))
    assert worst < GRAPH_LOGITS_TOLERANCE, worst  # measured 1.0e-7 (w8a8), 6.1e-7 (a16w4)


@pytest.mark.runtime
def test_quantized_workload_refuses_other_weights(tmp_path, float_tensors):
    from runtime.errors import WorkloadError
    from runtime.workloads import open_workload

    write_checkpoint(tmp_path, CFG, float_tensors)
    with pytest.raises(WorkloadError, match="decode-b8-a16w4 runs a16w4 weights, but .* holds float weights"):
        open_workload("decode-b8-a16w4", checkpoint=tmp_path)


@pytest.mark.runtime
def test_checkpoint_quant_from_a_float_checkpoint(tmp_path, float_tensors, capsys):
    from runtime.cli import main

    write_checkpoint(tmp_path / "f", CFG, float_tensors)
    assert main(["checkpoint", "--out", str(tmp_path / "q"), "--quant", "a16w4", "--from", str(tmp_path / "f")]) == 0
    cfg = load_config(tmp_path / "q")
    w, report = load_weights(tmp_path / "q", cfg)
    assert cfg.quant == A16W4 and report.mtp_skipped == 0
    o = "model.layers.1.self_attn.o_proj."
    want = Q.quantize_gptq(float_tensors[o + "weight"], 64)
    assert np.array_equal(w[o + "qweight"], want["qweight"]) and np.array_equal(w[o + "scales"], want["scales"])
    assert main(["checkpoint", "--out", str(tmp_path / "x"), "--from", str(tmp_path / "f")]) == 2
    assert "--from needs --quant" in capsys.readouterr().err
    assert main(["checkpoint", "--out", str(tmp_path / "x"), "--quant", "w8a8", "--from", str(tmp_path / "q")]) == 2
    assert "already a16w4-quantized" in capsys.readouterr().err
