"""Graph mode: the whole forward pass of one engine step compiled with `mindspore.jit`.

`GraphModel` is the same DeepSeek-V3 network as runtime/model.py written as one `nn.Cell` whose
`construct` MindSpore's graph parser accepts, so a step is one graph launch instead of hundreds of
PyNative dispatches. What differs from the eager model, and why:

* Inputs are vLLM's per-step metadata (`StepInputs`: token ids, positions, slot mapping, block
  tables, query start locations, sample rows), padded to a fixed shape bucket. Every shape in the
  graph is derived from its input tensors, never from a per-step Python value: a Python constant
  baked into a compiled graph goes stale when the graph is reused.
* Attention is per token over its request's whole block table (`max_blocks_per_seq` blocks, a
  fixed width), with the causal mask computed in the graph from the positions. The latent cache
  write (`scatter_update`) and the context gather both happen inside the graph. The cache has one
  extra block, the scratch block: padded tokens write there and padded block-table entries point
  there, so padding never touches a real request's cache.
* MoE routing is in the graph: every routed expert runs on every token (stacked weights, batched
  matmuls) and the outputs are combined with one-hot routing weights, so no expert id is read
  back to the host. Summation order differs from the eager expert loop, so logits agree within
  float32 rounding (GRAPH_LOGITS_TOLERANCE), not bit for bit.

`GraphRunner` owns a compiled callable and counts compilations: one graph per distinct input
shape, i.e. per token bucket (requests and sample rows are always padded to `max_num_seqs`), plus
one for the sampler (runtime/sampling_ops.py) of steps that do not sample greedily. The engine
compiles all of them in `compile_graphs()` during warm-up, so measured steps never compile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, mint, nn, ops

from runtime import kernels as K
from runtime.config import DeepseekV3Config
from runtime.model import NEG
from runtime.quant_graph import graph_experts, graph_linear
from runtime.rope import cos_sin_tables, rotation_indices

GRAPH_LOGITS_TOLERANCE = 1e-5
"""Largest |graph - eager| / max|eager| over a step's logits accepted as the same computation."""


def _param(a: np.ndarray, name: str) -> Parameter:
    return Parameter(Tensor(np.ascontiguousarray(a, dtype=np.float32)), name=name, requires_grad=False)


class _Layer(nn.Cell):
    """One decoder layer: MLA over the paged latent cache, then a dense SwiGLU MLP or DeepSeekMoE."""

    def __init__(self, cfg: DeepseekV3Config, w: dict[str, np.ndarray], i: int, cache_rows: int, context: int):
        super().__init__()
        p, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
        self.nh, self.nope, self.rope_d = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim
        self.lora, self.latent, self.v_dim = cfg.kv_lora_rank, cfg.latent_dim, cfg.v_head_dim
        self.qk_dim, self.context, self.eps = cfg.qk_head_dim, context, cfg.rms_norm_eps
        self.scale = cfg.softmax_scale
        self.q_lora = cfg.q_lora_rank is not None
        # Projections are Cells (runtime/quant_graph.py): one MatMul for float weights, the quantized arithmetic else.
        if self.q_lora:
            self.q_a = graph_linear(cfg, w, a + "q_a_proj", f"l{i}.q_a")
            self.q_a_norm = _param(w[a + "q_a_layernorm.weight"], f"l{i}.q_a_norm")
            self.q_b = graph_linear(cfg, w, a + "q_b_proj", f"l{i}.q_b")
        else:
            self.q_a = graph_linear(cfg, w, a + "q_proj", f"l{i}.q_proj")
            self.q_a_norm = self.q_b = None
        self.kv_a = graph_linear(cfg, w, a + "kv_a_proj_with_mqa", f"l{i}.kv_a")
        self.kv_a_norm = _param(w[a + "kv_a_layernorm.weight"], f"l{i}.kv_a_norm")
        self.o_proj = graph_linear(cfg, w, a + "o_proj", f"l{i}.o_proj")
        kv_b = w[a + "kv_b_proj.weight"].reshape(self.nh, self.nope + self.v_dim, self.lora)
        self.w_uk = _param(kv_b[:, : self.nope, :], f"l{i}.w_uk")  # [H, nope, lora]
        self.w_uv_t = _param(kv_b[:, self.nope :, :].transpose(0, 2, 1), f"l{i}.w_uv_t")  # [H, lora, v]
        self.in_norm = _param(w[p + "input_layernorm.weight"], f"l{i}.in_norm")
        self.post_norm = _param(w[p + "post_attention_layernorm.weight"], f"l{i}.post_norm")
        self.cache = Parameter(Tensor(np.zeros((cache_rows, cfg.latent_dim), np.float32)), name=f"latent_cache.{i}",
                               requires_grad=False)
        perm, partner, _ = rotation_indices(cfg.qk_rope_head_dim, cfg.rope.interleave)
        self.rot_perm, self.rot_partner = Tensor(perm), Tensor(partner)
        self.matmul = ops.MatMul(transpose_b=True)

    def norm(self, x, weight):
        return x * ops.rsqrt(ops.mean(ops.square(x), -1, True) + self.eps) * weight

    def rope(self, x, cos, sin):
        return ops.gather(x, self.rot_perm, x.ndim - 1) * cos + ops.gather(x, self.rot_partner, x.ndim - 1) * sin

    def swiglu(self, x, gate, up, down):
        return down(ops.silu(gate(x)) * up(x))

    def attention(self, x, cos, sin, slots, ctx_index, mask):
        t = x.shape[0]
        if self.q_lora:
            q = self.q_b(self.norm(self.q_a(x), self.q_a_norm))
        else:
            q = self.q_a(x)
        q = ops.reshape(q, (t, self.nh, self.qk_dim))
        q_nope = q[:, :, : self.nope]
        q_pe = self.rope(
            q[:, :, self.nope :], ops.reshape(cos, (t, 1, self.rope_d)), ops.reshape(sin, (t, 1, self.rope_d))
        )
        kv_a = self.kv_a(x)
        latent = self.norm(kv_a[:, : self.lora], self.kv_a_norm)
        k_pe = self.rope(kv_a[:, self.lora :], cos, sin)
        written = ops.scatter_update(self.cache, slots, ops.cat((latent, k_pe), -1))
        # Absorbed key half of kv_b_proj: q_latent[h] = q_nope[h] @ W_UK[h].
        q_lat = ops.transpose(mint.bmm(ops.transpose(q_nope, (1, 0, 2)), self.w_uk), (1, 0, 2))
        q_full = ops.cat((q_lat, q_pe), -1)  # [T, H, latent]
        cache = ops.depend(self.cache, written)  # read after this step's write
        ctx = ops.reshape(ops.gather(cache, ctx_index, 0), (t, self.context, self.latent))  # [T, L, latent]
        scores = mint.bmm(q_full, ops.transpose(ctx, (0, 2, 1)))  # [T, H, L]
        probs = ops.softmax(scores * self.scale + mask, -1)
        out_lat = mint.bmm(probs, ctx[:, :, : self.lora])  # [T, H, lora]
        out = ops.transpose(mint.bmm(ops.transpose(out_lat, (1, 0, 2)), self.w_uv_t), (1, 0, 2))  # [T, H, v]
        return self.o_proj(ops.reshape(out, (t, self.nh * self.v_dim)))

    def construct(self, x, cos, sin, slots, ctx_index, mask):
        x = x + self.attention(self.norm(x, self.in_norm), cos, sin, slots, ctx_index, mask)
        return x + self.mlp(self.norm(x, self.post_norm))


class _DenseLayer(_Layer):
    def __init__(self, cfg, w, i, cache_rows, context):
        super().__init__(cfg, w, i, cache_rows, context)
        m = f"model.layers.{i}.mlp."
        self.gate = graph_linear(cfg, w, m + "gate_proj", f"l{i}.gate")
        self.up = graph_linear(cfg, w, m + "up_proj", f"l{i}.up")
        self.down = graph_linear(cfg, w, m + "down_proj", f"l{i}.down")

    def mlp(self, x):
        return self.swiglu(x, self.gate, self.up, self.down)


class _MoELayer(_Layer):
    """DeepSeekMoE with routing in the graph: all experts computed, combined by one-hot weights."""

    def __init__(self, cfg, w, i, cache_rows, context):
        super().__init__(cfg, w, i, cache_rows, context)
        m = f"model.layers.{i}.mlp."
        self.e, self.g, self.k = cfg.n_routed_experts, cfg.n_group, cfg.num_experts_per_tok
        self.topk_group, self.norm_topk = cfg.topk_group, cfg.norm_topk_prob
        self.routed_scale = cfg.routed_scaling_factor
        self.router = _param(w[m + "gate.weight"], f"l{i}.router")
        self.bias = _param(w[m + "gate.e_score_correction_bias"], f"l{i}.router_bias")
        # Stacked and pre-transposed so that x @ W^T for every expert is one batched matmul ([E, T, H] out).
        self.experts = graph_experts(cfg, w, i, f"l{i}.experts")
        self.shared = bool(cfg.n_shared_experts)
        s = m + "shared_experts."
        if self.shared:
            self.s_gate = graph_linear(cfg, w, s + "gate_proj", f"l{i}.shared.gate")
            self.s_up = graph_linear(cfg, w, s + "up_proj", f"l{i}.shared.up")
            self.s_down = graph_linear(cfg, w, s + "down_proj", f"l{i}.shared.down")
        else:
            self.s_gate = self.s_up = self.s_down = None
        self.neg_inf = Tensor(np.array(-np.inf, np.float32))

    def mlp(self, x):
        t = x.shape[0]
        e, g = self.e, self.g
        scores = ops.sigmoid(self.matmul(x, self.router))
        grouped = ops.reshape(scores + self.bias, (t, g, e // g))
        top2, _ = ops.topk(grouped, 2, dim=-1, largest=True, sorted=True)
        group_score = ops.sum(top2, -1)  # [T, G]
        kth, _ = ops.topk(group_score, self.topk_group, dim=-1, largest=True, sorted=True)
        keep = ops.ge(group_score, kth[:, self.topk_group - 1 :])
        masked = ops.where(ops.reshape(keep, (t, g, 1)), grouped, self.neg_inf)
        _, ids = ops.topk(ops.reshape(masked, (t, e)), self.k, dim=-1, largest=True, sorted=True)
        weights = ops.gather_elements(scores, 1, ids)
        if self.norm_topk:
            weights = weights / (ops.sum(weights, -1, True) + 1e-20)
        weights = weights * self.routed_scale
        combine = ops.sum(ops.one_hot(ids, e, 1.0, 0.0) * ops.expand_dims(weights, -1), 1)  # [T, E]
        y = self.experts(x)  # [E, T, H]
        out = ops.sum(y * ops.expand_dims(ops.transpose(combine, (1, 0)), -1), 0)
        if self.shared:
            out = out + self.swiglu(x, self.s_gate, self.s_up, self.s_down)
        return out


class GraphModel(nn.Cell):
    """The DeepSeek-V3 network over one step's padded StepInputs; `construct` is what gets compiled.

    construct(input_ids [T], positions [T], slot_mapping [T], block_tables [R, B], query_start_loc [R+1],
    sample_index [S]) -> logits [S, vocab]. B is `max_blocks_per_seq`; the cache has num_blocks + 1 blocks,
    block `num_blocks` being the scratch block that padding writes to and reads from.
    """

    def __init__(self, cfg: DeepseekV3Config, weights: dict[str, np.ndarray], num_blocks: int, block_size: int,
                 max_blocks_per_seq: int):
        super().__init__()
        K.configure()
        self.cfg = cfg
        self.num_slots = num_blocks * block_size
        self.scratch_block = num_blocks
        self.block_size, self.max_blocks_per_seq = block_size, max_blocks_per_seq
        self.context = max_blocks_per_seq * block_size
        rows = (num_blocks + 1) * block_size
        layer = [_MoELayer if cfg.is_moe_layer(i) else _DenseLayer for i in range(cfg.num_hidden_layers)]
        self.layers = nn.CellList([layer[i](cfg, weights, i, rows, self.context) for i in range(cfg.num_hidden_layers)])
        self.embed = _param(weights["model.embed_tokens.weight"], "embed")
        head = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
        self.head = self.embed if cfg.tie_word_embeddings else _param(weights[head], "lm_head")
        self.final_norm = _param(weights["model.norm.weight"], "final_norm")
        cos, sin = cos_sin_tables(cfg.rope, cfg.qk_rope_head_dim, cfg.max_position_embeddings)
        _, _, sign = rotation_indices(cfg.qk_rope_head_dim, cfg.rope.interleave)
        self.cos, self.sin = Tensor(cos), Tensor(sin * sign)  # sign folded into sin, as the eager model does
        self.offsets = Tensor(np.arange(block_size, dtype=np.int32))
        self.columns = Tensor(np.arange(self.context, dtype=np.int32))
        self.neg = Tensor(np.array(NEG, np.float32))
        self.zero = Tensor(np.array(0.0, np.float32))
        self.eps = cfg.rms_norm_eps
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, input_ids, positions, slot_mapping, block_tables, query_start_loc, sample_index):
        t, r = input_ids.shape[0], block_tables.shape[0]
        # Request of each flat token: how many requests end at or before it (padding goes to the last row).
        tokens = ops.arange(0, t, dtype=ms.int32)
        req = ops.sum(ops.cast(ops.expand_dims(tokens, 1) >= ops.expand_dims(query_start_loc[1:], 0), ms.int32), 1)
        req = ops.minimum(req, r - 1)
        table = ops.gather(block_tables, req, 0)  # [T, B]
        slots = ops.expand_dims(table * self.block_size, -1) + self.offsets  # [T, B, block]
        ctx_index = ops.reshape(slots, (t * self.context,))
        visible = ops.expand_dims(self.columns, 0) <= ops.expand_dims(positions, 1)  # [T, L]
        mask = ops.reshape(ops.where(visible, self.zero, self.neg), (t, 1, self.context))
        cos = ops.gather(self.cos, positions, 0)
        sin = ops.gather(self.sin, positions, 0)
        x = ops.gather(self.embed, input_ids, 0)
        for layer in self.layers:
            x = layer(x, cos, sin, slot_mapping, ctx_index, mask)
        rows = ops.gather(x, sample_index, 0)
        rows = rows * ops.rsqrt(ops.mean(ops.square(rows), -1, True) + self.eps) * self.final_norm
        return self.matmul(rows, self.head)

    def reset_cache(self) -> None:
        for layer in self.layers:
            layer.cache.set_data(Tensor(np.zeros(layer.cache.shape, np.float32)))


@dataclass
class CompileStats:
    """Graphs compiled so far: one per input shape, with the first call's wall time (compile plus one run)."""

    shapes: list[tuple] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.shapes)

    @property
    def total_s(self) -> float:
        return float(sum(self.seconds))


class GraphRunner:
    """A Cell's construct under mindspore.jit (the GraphModel, or the sampler's _Choose); each new input shape
    compiles once and is counted in `stats`, which runners of one engine share."""

    def __init__(self, cell: nn.Cell, jit_level: str = "O0", stats: CompileStats | None = None):
        self.cell = cell
        self.jit_level = jit_level
        self.fn = ms.jit(cell.construct, jit_level=jit_level)
        self.stats = stats if stats is not None else CompileStats()
        self._seen: set[tuple] = set()

    def __call__(self, *arrays: Tensor):
        key = tuple(tuple(a.shape) for a in arrays)
        K.count_dispatch()
        if key in self._seen:
            return self.fn(*arrays)
        t0 = time.perf_counter()
        out = self.fn(*arrays)
        out.asnumpy()  # the compile and the run are over before the clock stops
        self.stats.shapes.append(key)
        self.stats.seconds.append(time.perf_counter() - t0)
        self._seen.add(key)
        return out
