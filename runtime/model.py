"""DeepSeek-V3 forward pass on MindSpore (PyNative, CPU) over a paged latent KV cache: the eager mode.

One call of `DeepseekV3Model.forward` runs a flat batch of tokens from many requests (prefill
chunks and decode tokens mixed, as the engine schedules them). Per layer:

* MLA: low-rank query (q_a_proj -> RMSNorm -> q_b_proj), compressed KV (kv_a_proj_with_mqa ->
  RMSNorm on the latent), a decoupled RoPE key shared by all heads; the cache stores only
  [latent | rope key] per token; kv_b_proj is absorbed into the query (keys) and the output
  (values), so attention runs over the latent as DeepSeek's decode kernels do;
* the first `first_k_dense_replace` layers: a SwiGLU MLP;
* the rest: DeepSeekMoE with shared experts, sigmoid scores, `e_score_correction_bias` used only
  for choosing, group-limited top-k (groups ranked by the sum of their two best experts),
  optional renormalisation and `routed_scaling_factor`; routed experts run one by one over the
  tokens routed to them, which needs the expert ids on the host once per layer.

The engine (runtime/engine.py) derives `BatchInputs` on the host from the step's vLLM-shaped
StepInputs (`eager_batch`). Graph mode runs the same network as runtime/graph.py's GraphModel.

A model may hold only a contiguous range of layers (`layers=range(first, stop)`): a pipeline stage
of the Ray executor (runtime/ray_executor.py). `forward_stage` then takes the previous stage's
hidden states (or embeds the tokens, when the range starts at layer 0) and returns its own hidden
states (or the logits, when the range ends at the last layer); the operators and their order are
those of `forward`, so a split model computes the same floats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from runtime import kernels as K
from runtime.config import DeepseekV3Config
from runtime.errors import EngineError
from runtime.rope import cos_sin_tables, rotation_indices

NEG = -1e30  # additive mask; finite so fully padded query rows stay NaN-free


@dataclass
class BatchInputs:
    """Host-built index arrays for one forward call (T tokens from R requests, padded to Qmax x Lmax)."""

    input_ids: np.ndarray  # [T] int32
    positions: np.ndarray  # [T] int32
    slot_mapping: np.ndarray  # [T] int32: cache slot each new token's latent is written to
    query_index: np.ndarray  # [R * Qmax] int32: flat token feeding each padded query row
    context_slots: np.ndarray  # [R * Lmax] int32: cache slots each request attends over
    mask: np.ndarray  # [R, Qmax, 1, Lmax] float32 additive (0 or NEG)
    output_index: np.ndarray  # [T] int32: padded query row of each flat token
    sample_index: np.ndarray  # [S] int32: flat tokens whose logits are wanted
    num_requests: int
    max_query: int
    max_context: int


def stage_tensors(cfg: DeepseekV3Config, weights: dict[str, np.ndarray], layers: range) -> dict[str, np.ndarray]:
    """The tensors a model of `layers` uses: those layers', the embedding (first stage; last stage too when tied),
    the final norm and the LM head (last stage)."""
    first, last = layers.start == 0, layers.stop == cfg.num_hidden_layers
    keep = {}
    for name, a in weights.items():
        m = _LAYER.match(name)
        if m:
            use = int(m.group(1)) in layers
        elif name == "model.embed_tokens.weight":
            use = first or (last and cfg.tie_word_embeddings)
        else:  # model.norm.weight, lm_head.weight
            use = last
        if use:
            keep[name] = a
    return keep


_LAYER = re.compile(r"model\.layers\.(\d+)\.")


class DeepseekV3Model:
    """Weights as MindSpore tensors plus one latent cache Parameter per layer (of `layers`, default all)."""

    def __init__(self, cfg: DeepseekV3Config, weights: dict[str, np.ndarray], num_slots: int,
                 layers: range | None = None):
        K.configure()
        self.cfg = cfg
        self.num_slots = num_slots
        self.layers = range(cfg.num_hidden_layers) if layers is None else layers
        self.first = self.layers.start == 0
        self.last = self.layers.stop == cfg.num_hidden_layers
        from runtime.quant_linear import build_linears

        # Quantized checkpoints (runtime/quant.py): those linears keep their tensors and run per call.
        self.quant_linears, held = build_linears(cfg, weights)
        w = {name: K.to_device(a) for name, a in stage_tensors(cfg, weights, self.layers).items() if name not in held}
        self.w = w
        h = cfg.num_attention_heads
        self.w_uk: dict[int, object] = {}
        self.w_uv_t: dict[int, object] = {}
        for i in self.layers:
            kv_b = weights[f"model.layers.{i}.self_attn.kv_b_proj.weight"].reshape(
                h, cfg.qk_nope_head_dim + cfg.v_head_dim, cfg.kv_lora_rank
            )
            self.w_uk[i] = K.to_device(np.ascontiguousarray(kv_b[:, : cfg.qk_nope_head_dim, :]))
            self.w_uv_t[i] = K.to_device(np.ascontiguousarray(kv_b[:, cfg.qk_nope_head_dim :, :].transpose(0, 2, 1)))
        cos, sin = cos_sin_tables(cfg.rope, cfg.qk_rope_head_dim, cfg.max_position_embeddings)
        self.cos, self.sin = K.to_device(cos), K.to_device(sin)
        perm, partner, sign = rotation_indices(cfg.qk_rope_head_dim, cfg.rope.interleave)
        self.rot_perm, self.rot_partner = K.to_device(perm), K.to_device(partner)
        self.rot_sign = K.to_device(sign)
        self.eps = cfg.rms_norm_eps
        self.neg_inf = K.to_device(np.array(-np.inf, dtype=np.float32))
        self.caches = {
            i: K.parameter(np.zeros((num_slots, cfg.latent_dim), np.float32), f"latent_cache.{i}") for i in self.layers
        }

    def reset_cache(self) -> None:
        """Zero every cache slot (tests and verify; the engine never needs it)."""
        for c in self.caches.values():
            c.set_data(K.to_device(np.zeros(c.shape, np.float32)))

    # -- building blocks -------------------------------------------------------------------
    def rms_norm(self, x, weight):
        r = K.rsqrt(K.add(K.mean_last(K.square(x)), self.eps))
        return K.mul(K.mul(x, r), weight)

    def proj(self, x, base: str):
        """The linear `base` (`model.layers.0.self_attn.o_proj`): x @ weight^T, or its quantized linear."""
        q = self.quant_linears.get(base)
        return K.linear(x, self.w[base + ".weight"]) if q is None else q(x)

    def swiglu(self, x, prefix: str):
        g = K.silu(self.proj(x, prefix + "gate_proj"))
        return self.proj(K.mul(g, self.proj(x, prefix + "up_proj")), prefix + "down_proj")

    def rope(self, x, cos, sin):
        """Rotate the last axis of x (cos/sin broadcast over the axes in between)."""
        a = K.mul(K.gather_cols(x, self.rot_perm), cos)
        b = K.mul(K.gather_cols(x, self.rot_partner), sin)
        return K.add(a, b)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, b: BatchInputs):
        """Logits [S, vocab] (a MindSpore tensor) for the tokens in b.sample_index (a model of every layer)."""
        return self.forward_stage(b, None)

    def forward_stage(self, b: BatchInputs, hidden):
        """This model's layers over b: from the token ids (first stage, `hidden` None) or from the previous stage's
        hidden states [T, hidden] (a tensor or NumPy array); returns the logits [S, vocab] (last stage) or the hidden
        states after this stage's last layer (a tensor)."""
        cfg, w = self.cfg, self.w
        if self.first != (hidden is None):
            need = "the first stage embeds the tokens" if self.first else "needs the previous stage's hidden states"
            raise EngineError(f"layers {self.layers.start}..{self.layers.stop - 1}: {need}")
        t = len(b.input_ids)
        pos = K.from_numpy(b.positions)
        step = {
            "slots": K.from_numpy(b.slot_mapping),
            "qidx": K.from_numpy(b.query_index),
            "ctx": K.from_numpy(b.context_slots),
            "mask": K.from_numpy(b.mask),
            "oidx": K.from_numpy(b.output_index),
        }
        # RoPE tables for this step's positions, shared by every layer; sign folded into sin.
        cos = K.gather_rows(self.cos, pos)
        sin = K.mul(K.gather_rows(self.sin, pos), self.rot_sign)
        step["cos_q"] = K.reshape(cos, (t, 1, cfg.qk_rope_head_dim))
        step["sin_q"] = K.reshape(sin, (t, 1, cfg.qk_rope_head_dim))
        step["cos_k"], step["sin_k"] = cos, sin

        if hidden is None:
            x = K.gather_rows(w["model.embed_tokens.weight"], K.from_numpy(b.input_ids))
        else:
            x = K.from_numpy(hidden) if isinstance(hidden, np.ndarray) else hidden
        for i in self.layers:
            p = f"model.layers.{i}."
            x = K.add(x, self.attention(i, self.rms_norm(x, w[p + "input_layernorm.weight"]), step, b))
            normed = self.rms_norm(x, w[p + "post_attention_layernorm.weight"])
            mlp = self.moe(normed, p) if cfg.is_moe_layer(i) else self.swiglu(normed, p + "mlp.")
            x = K.add(x, mlp)
        if not self.last:
            return x
        rows = K.gather_rows(x, K.from_numpy(b.sample_index))
        rows = self.rms_norm(rows, w["model.norm.weight"])
        head = w["model.embed_tokens.weight"] if cfg.tie_word_embeddings else w["lm_head.weight"]
        return K.linear(rows, head)

    def attention(self, layer: int, x, step: dict, b: BatchInputs):
        cfg, w = self.cfg, self.w
        a = f"model.layers.{layer}.self_attn."
        t, nh = len(b.input_ids), cfg.num_attention_heads
        nope, rope_d, lora = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank
        if cfg.q_lora_rank is None:
            q = self.proj(x, a + "q_proj")
        else:
            q_a = self.rms_norm(self.proj(x, a + "q_a_proj"), w[a + "q_a_layernorm.weight"])
            q = self.proj(q_a, a + "q_b_proj")
        q = K.reshape(q, (t, nh, cfg.qk_head_dim))
        q_nope = K.narrow_last(q, 0, nope)
        q_pe = self.rope(K.narrow_last(q, nope, rope_d), step["cos_q"], step["sin_q"])

        kv_a = self.proj(x, a + "kv_a_proj_with_mqa")
        latent = self.rms_norm(K.narrow_last(kv_a, 0, lora), w[a + "kv_a_layernorm.weight"])
        k_pe = self.rope(K.narrow_last(kv_a, lora, rope_d), step["cos_k"], step["sin_k"])
        K.scatter_rows(self.caches[layer], step["slots"], K.cat_last([latent, k_pe]))

        # Absorb kv_b_proj's key half into the query: q_latent[h] = q_nope[h] @ W_UK[h].
        q_lat = K.swap01(K.bmm(K.swap01(q_nope), self.w_uk[layer]))  # [T, H, lora]
        q_full = K.cat_last([q_lat, q_pe])  # [T, H, lora + rope]
        r, qm, lm = b.num_requests, b.max_query, b.max_context
        q_pad = K.reshape(K.gather_rows(q_full, step["qidx"]), (r, qm * nh, cfg.latent_dim))
        ctx = K.reshape(K.gather_rows(self.caches[layer], step["ctx"]), (r, lm, cfg.latent_dim))
        scores = K.reshape(K.bmm(q_pad, K.swap12(ctx)), (r, qm, nh, lm))
        probs = K.softmax_last(K.add(K.mul(scores, cfg.softmax_scale), step["mask"]))
        out_lat = K.bmm(K.reshape(probs, (r, qm * nh, lm)), K.narrow_last(ctx, 0, lora))
        out_lat = K.gather_rows(K.reshape(out_lat, (r * qm, nh, lora)), step["oidx"])  # [T, H, lora]
        # Value half of kv_b_proj applied after attention: out[h] = out_lat[h] @ W_UV[h]^T.
        out = K.swap01(K.bmm(K.swap01(out_lat), self.w_uv_t[layer]))  # [T, H, v]
        return self.proj(K.reshape(out, (t, nh * cfg.v_head_dim)), a + "o_proj")

    def route(self, x, p: str):
        """Device tensors (expert ids [T, k] int, combine weights [T, k]) for tokens x [T, hidden]."""
        cfg, w = self.cfg, self.w
        t, e, g = x.shape[0], cfg.n_routed_experts, cfg.n_group
        scores = K.sigmoid(K.linear(x, w[p + "mlp.gate.weight"]))
        choice = K.add(scores, w[p + "mlp.gate.e_score_correction_bias"])
        grouped = K.reshape(choice, (t, g, e // g))
        top2, _ = K.topk_last(grouped, 2)
        group_score = K.sum_last(top2)  # [T, G]: each group's two best experts
        kth, _ = K.topk_last(group_score, cfg.topk_group)
        keep = K.greater_equal(group_score, K.narrow_last(kth, cfg.topk_group - 1, 1))
        masked = K.where(K.reshape(keep, (t, g, 1)), grouped, self.neg_inf)
        _, ids = K.topk_last(K.reshape(masked, (t, e)), cfg.num_experts_per_tok)
        weights = K.gather_last(scores, ids)
        if cfg.norm_topk_prob:
            weights = K.div(weights, K.add(K.sum_last(weights, keepdim=True), 1e-20))
        return ids, K.mul(weights, cfg.routed_scaling_factor)

    def moe(self, x, p: str):
        cfg = self.cfg
        t, k = x.shape[0], cfg.num_experts_per_tok
        ids, weights = self.route(x, p)
        flat_w = K.reshape(weights, (t * k, 1))
        ids_host = K.to_host(ids).reshape(-1)
        out = K.zeros_like(x)
        # Group (token, slot) pairs by expert on the host, then run each used expert once.
        order = np.argsort(ids_host, kind="stable")
        experts, starts = np.unique(ids_host[order], return_index=True)
        bounds = list(starts[1:]) + [len(order)]
        for e, lo, hi in zip(experts.tolist(), starts.tolist(), bounds, strict=True):
            pairs = order[lo:hi].astype(np.int32)
            tokens = pairs // k
            xe = K.gather_rows(x, K.to_device(tokens))
            ye = self.swiglu(xe, f"{p}mlp.experts.{e}.")
            ye = K.mul(ye, K.gather_rows(flat_w, K.to_device(pairs)))
            out = K.scatter_add_rows(out, K.to_device(tokens.reshape(-1, 1)), ye)
        if cfg.n_shared_experts:
            out = K.add(out, self.swiglu(x, p + "mlp.shared_experts."))
        return out


def contiguous_batch(tokens: np.ndarray, start: int, context_slots_base: int = 0) -> BatchInputs:
    """BatchInputs for one request whose tokens [start, start+len) go into slots base+position.

    Used by `verify` and tests: a single sequence, cache laid out contiguously from slot `base`.
    """
    n = len(tokens)
    ctx_len = start + n
    positions = np.arange(start, ctx_len, dtype=np.int32)
    mask = np.where(np.arange(ctx_len)[None, :] <= positions[:, None], 0.0, NEG).astype(np.float32)
    return BatchInputs(
        input_ids=np.asarray(tokens, dtype=np.int32),
        positions=positions,
        slot_mapping=(positions + context_slots_base).astype(np.int32),
        query_index=np.arange(n, dtype=np.int32),
        context_slots=(np.arange(ctx_len) + context_slots_base).astype(np.int32),
        mask=mask.reshape(1, n, 1, ctx_len),
        output_index=np.arange(n, dtype=np.int32),
        sample_index=np.arange(n, dtype=np.int32),
        num_requests=1,
        max_query=n,
        max_context=ctx_len,
    )
