"""Check the MindSpore model against the NumPy reference on one checkpoint.

The prompt goes through the MindSpore model in prefill chunks over the paged latent cache, then
`decode` tokens one at a time; the reference recomputes the whole sequence from scratch each time.
Logits must agree within float32 tolerance (|diff| <= atol + rtol * max|reference|).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

RTOL = 1e-4
ATOL = 1e-4


def _reference_weights(ckpt, cfg, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float weights the reference runs: as loaded, or an A16W4 checkpoint's dequantized (the same math).

    W8A8 also quantizes activations, which the float reference does not model, so it is refused.
    """
    if cfg.quant is None or not cfg.quant.runs_quantized:
        return weights
    from dataclasses import replace

    from runtime.errors import CheckpointError
    from runtime.quant import dequantize_weights
    from runtime.weights import expected_tensors

    if cfg.quant.method == "w8a8":
        raise CheckpointError(
            f"{ckpt}: verify compares with the float reference, and W8A8 quantizes activations too; "
            "compare its logits with the float checkpoint's instead (generate --logits-out)"
        )
    return dequantize_weights(cfg.quant, expected_tensors(replace(cfg, quant=None)), weights)


def verify_checkpoint(
    ckpt: str | Path, prompt_len: int = 40, decode: int = 6, chunk: int = 16, seed: int = 0
) -> tuple[bool, list[str]]:
    from runtime import kernels as K
    from runtime.config import load_config
    from runtime.model import DeepseekV3Model, contiguous_batch
    from runtime.reference import ReferenceModel
    from runtime.weights import load_weights

    cfg = load_config(ckpt)
    weights, report = load_weights(ckpt, cfg)
    total = min(prompt_len + decode, cfg.max_position_embeddings)
    prompt_len = min(prompt_len, total - 1)
    ref = ReferenceModel(cfg, _reference_weights(ckpt, cfg, weights))
    model = DeepseekV3Model(cfg, weights, total)
    tokens = [int(t) for t in np.random.default_rng(seed).integers(0, cfg.vocab_size, prompt_len)]
    lines = [f"{ckpt}: {report.summary()}"]
    worst = 0.0
    ok = True

    def compare(what: str, got: np.ndarray, want: np.ndarray) -> None:
        nonlocal worst, ok
        err = float(np.abs(got - want).max())
        bound = ATOL + RTOL * float(np.abs(want).max())
        worst = max(worst, err / bound)
        good = err <= bound
        ok &= good
        lines.append(f"  {what:28s} max|diff| {err:.3e}  bound {bound:.3e}  {'ok' if good else 'FAIL'}")

    full = ref.forward(np.asarray(tokens))
    for start in range(0, prompt_len, chunk):
        part = tokens[start : start + chunk]
        got = K.to_host(model.forward(contiguous_batch(np.asarray(part), start)))
        compare(f"prefill tokens {start}..{start + len(part) - 1}", got, full[start : start + len(part)])
    for _ in range(decode):
        nxt = int(np.argmax(full[-1]))
        tokens.append(nxt)
        full = ref.forward(np.asarray(tokens))
        got = K.to_host(model.forward(contiguous_batch(np.asarray([nxt]), len(tokens) - 1)))
        compare(f"decode position {len(tokens) - 1}", got, full[-1:])
    lines.append(f"{'PASS' if ok else 'FAIL'}: worst error {worst:.2f} of the float32 bound (rtol {RTOL}, atol {ATOL})")
    return ok, lines
