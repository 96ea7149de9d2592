"""NumPy reference forward pass of DeepSeek-V3, written straight from the architecture, no cache.

It computes attention the textbook way (expand the latent through kv_b_proj into per-head keys and
values), while the MindSpore model absorbs kv_b_proj into the query and attends over the cached
latent; agreement between the two is what `python -m runtime verify` checks.
"""

from __future__ import annotations

import numpy as np

from runtime.config import DeepseekV3Config
from runtime.rope import cos_sin_tables


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    return (x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps) * w).astype(np.float32)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def swiglu(x: np.ndarray, w: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    g = x @ w[prefix + "gate_proj.weight"].T
    u = x @ w[prefix + "up_proj.weight"].T
    return (silu(g) * u) @ w[prefix + "down_proj.weight"].T


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, interleave: bool) -> np.ndarray:
    """Rotate the last axis of x[..., seq, dim] by position tables cos/sin[seq, dim]."""
    d = x.shape[-1]
    if interleave:  # (x0, x1, x2, x3, ...) -> (x0, x2, ..., x1, x3, ...)
        x = np.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)
    rotated = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], axis=-1)
    return x * cos + rotated * sin


class ReferenceModel:
    """Full-sequence forward: token ids [S] -> logits [S, vocab] (float32)."""

    def __init__(self, cfg: DeepseekV3Config, weights: dict[str, np.ndarray]):
        self.cfg = cfg
        self.w = weights
        self.cos, self.sin = cos_sin_tables(cfg.rope, cfg.qk_rope_head_dim, cfg.max_position_embeddings)

    def forward(self, ids: np.ndarray) -> np.ndarray:
        cfg, w = self.cfg, self.w
        ids = np.asarray(ids, dtype=np.int64)
        x = w["model.embed_tokens.weight"][ids]
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            x = x + self.attention(rms_norm(x, w[p + "input_layernorm.weight"], cfg.rms_norm_eps), p)
            h = rms_norm(x, w[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
            x = x + (self.moe(h, p) if cfg.is_moe_layer(i) else swiglu(h, w, p + "mlp."))
        x = rms_norm(x, w["model.norm.weight"], cfg.rms_norm_eps)
        head = w["model.embed_tokens.weight"] if cfg.tie_word_embeddings else w["lm_head.weight"]
        return (x @ head.T).astype(np.float32)

    def attention(self, x: np.ndarray, p: str) -> np.ndarray:
        cfg, w = self.cfg, self.w
        s, nh = x.shape[0], cfg.num_attention_heads
        a = p + "self_attn."
        if cfg.q_lora_rank is None:
            q = x @ w[a + "q_proj.weight"].T
        else:
            qa = rms_norm(x @ w[a + "q_a_proj.weight"].T, w[a + "q_a_layernorm.weight"], cfg.rms_norm_eps)
            q = qa @ w[a + "q_b_proj.weight"].T
        q = q.reshape(s, nh, cfg.qk_head_dim).transpose(1, 0, 2)  # [heads, seq, dim]
        q_nope, q_pe = q[..., : cfg.qk_nope_head_dim], q[..., cfg.qk_nope_head_dim :]

        kv_a = x @ w[a + "kv_a_proj_with_mqa.weight"].T
        latent, k_pe = kv_a[:, : cfg.kv_lora_rank], kv_a[:, cfg.kv_lora_rank :]
        latent = rms_norm(latent, w[a + "kv_a_layernorm.weight"], cfg.rms_norm_eps)
        kv = (latent @ w[a + "kv_b_proj.weight"].T).reshape(s, nh, cfg.qk_nope_head_dim + cfg.v_head_dim)
        kv = kv.transpose(1, 0, 2)
        k_nope, v = kv[..., : cfg.qk_nope_head_dim], kv[..., cfg.qk_nope_head_dim :]

        cos, sin = self.cos[:s], self.sin[:s]
        q_pe = apply_rope(q_pe, cos, sin, cfg.rope.interleave)
        k_pe = apply_rope(k_pe[None], cos, sin, cfg.rope.interleave)  # one RoPE key shared by all heads
        k = np.concatenate([k_nope, np.broadcast_to(k_pe, (nh, s, cfg.qk_rope_head_dim))], axis=-1)
        qf = np.concatenate([q_nope, q_pe], axis=-1)

        scores = (qf.astype(np.float64) @ k.transpose(0, 2, 1)) * cfg.softmax_scale
        scores = scores + np.triu(np.full((s, s), -np.inf), k=1)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        out = (probs @ v).transpose(1, 0, 2).reshape(s, nh * cfg.v_head_dim).astype(np.float32)
        return out @ w[a + "o_proj.weight"].T

    def route(self, x: np.ndarray, p: str) -> tuple[np.ndarray, np.ndarray]:
        """Sigmoid scores, bias-corrected group-limited top-k: (expert ids [S, k], weights [S, k])."""
        cfg, w = self.cfg, self.w
        scores = sigmoid(x @ w[p + "mlp.gate.weight"].T)
        choice = scores + w[p + "mlp.gate.e_score_correction_bias"]
        s, e, g = x.shape[0], cfg.n_routed_experts, cfg.n_group
        grouped = choice.reshape(s, g, e // g)
        group_score = np.sort(grouped, axis=-1)[..., -2:].sum(-1)  # sum of each group's top two
        keep_groups = np.argsort(-group_score, axis=-1, kind="stable")[:, : cfg.topk_group]
        mask = np.zeros((s, g), dtype=bool)
        np.put_along_axis(mask, keep_groups, True, axis=-1)
        masked = np.where(np.repeat(mask, e // g, axis=-1), choice, -np.inf)
        ids = np.argsort(-masked, axis=-1, kind="stable")[:, : cfg.num_experts_per_tok]
        weights = np.take_along_axis(scores, ids, axis=-1)
        if cfg.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdims=True) + 1e-20)
        return ids, weights * cfg.routed_scaling_factor

    def moe(self, x: np.ndarray, p: str) -> np.ndarray:
        ids, weights = self.route(x, p)
        out = np.zeros_like(x)
        for t in range(x.shape[0]):
            for e, wt in zip(ids[t], weights[t], strict=True):
                out[t] += wt * swiglu(x[t : t + 1], self.w, f"{p}mlp.experts.{e}.")[0]
        if self.cfg.n_shared_experts:
            out = out + swiglu(x, self.w, p + "mlp.shared_experts.")
        return out
