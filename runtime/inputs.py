"""One engine step's input preparation, the pure-Python reference: StepInputs, prepare_inputs, eager_batch.

`prepare_inputs` builds the step's vLLM-shaped metadata as NumPy arrays from the scheduled batch and the
block manager (token ids, positions, slot mapping, block tables, query start locations, sequence lengths,
sample rows); `eager_batch` derives the eager model's padded per-request index arrays and masks from them.
runtime/_hostpath.pyx has compiled twins with the same outputs; runtime/hostpath.py picks which runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.kv_cache import BlockManager
from runtime.scheduler import ScheduledStep


@dataclass
class StepInputs:
    """One step's metadata as vLLM's model runner prepares it (host NumPy; T tokens of R requests)."""

    input_ids: np.ndarray  # [T] int32
    positions: np.ndarray  # [T] int32
    slot_mapping: np.ndarray  # [T] int32: cache slot each new token's latent is written to
    block_tables: np.ndarray  # [R, B] int32: each request's cache blocks, padded with `pad_block`
    query_start_loc: np.ndarray  # [R + 1] int32: where each request's tokens start in the flat batch
    seq_lens: np.ndarray  # [R] int32: tokens of context each request attends over after this step
    sample_index: np.ndarray  # [S] int32: flat tokens whose logits are sampled
    num_tokens: int  # real tokens (T may be larger when padded)
    num_requests: int  # real requests


def prepare_inputs(step: ScheduledStep, blocks: BlockManager, *, width: int | None = None, pad_block: int = 0,
                   tokens: int | None = None, requests: int | None = None) -> StepInputs:
    """The step's StepInputs; with `tokens`/`requests`/`width` given, padded to that shape (graph buckets).

    Padding tokens have id 0, position 0 and write to slot `pad_block * block_size`; padding requests start
    and end at the last real token and hold only `pad_block`; padding sample rows read token 0.
    """
    bs = blocks.block_size
    items = step.items
    n_tok = sum(n for _, n in items)
    r = len(items)
    t_pad, r_pad = tokens or n_tok, requests or r
    num = np.fromiter((n for _, n in items), np.int32, r)
    start = np.fromiter((req.num_computed for req, _ in items), np.int32, r)
    seq_lens = start + num
    b = width or int(-(-seq_lens.max() // bs))
    tables = np.full((r_pad, b), pad_block, np.int32)
    for k, (req, _) in enumerate(items):
        held = blocks.blocks_of(req.request_id)
        tables[k, : len(held)] = held
    qsl = np.full(r_pad + 1, n_tok, np.int32)
    qsl[0] = 0
    np.cumsum(num, out=qsl[1 : r + 1])
    req_of = np.repeat(np.arange(r), num)
    positions = np.zeros(t_pad, np.int32)
    positions[:n_tok] = np.arange(n_tok) - qsl[req_of] + start[req_of]
    slots = np.full(t_pad, pad_block * bs, np.int32)
    slots[:n_tok] = tables[req_of, positions[:n_tok] // bs] * bs + positions[:n_tok] % bs
    ids = np.zeros(t_pad, np.int32)
    ids[:n_tok] = [t for req, n in items for t in req.tokens[req.num_computed : req.num_computed + n]]
    samples = [qsl[k + 1] - 1 for k, (req, n) in enumerate(items) if req.num_computed + n == req.num_tokens]
    sample_index = np.zeros(max(len(samples), r_pad if requests else 0), np.int32)
    sample_index[: len(samples)] = samples
    return StepInputs(ids, positions, slots, tables, qsl, seq_lens, sample_index, n_tok, r)


def eager_batch(s: StepInputs, block_size: int):
    """The eager model's padded [R, Qmax] x [R, Lmax] index arrays (a runtime.model.BatchInputs), derived from
    unpadded StepInputs."""
    from runtime.model import NEG, BatchInputs  # here, not above: runtime.model imports MindSpore

    r = s.num_requests
    num = np.diff(s.query_start_loc[: r + 1])
    start = s.seq_lens - num
    qmax, lmax = int(num.max()), int(s.seq_lens.max())
    cols = np.arange(lmax)
    context = s.block_tables[:, cols // block_size] * block_size + cols % block_size
    context = np.where(cols[None, :] < s.seq_lens[:, None], context, 0).astype(np.int32)
    rows = np.arange(qmax)
    valid = rows[None, :] < num[:, None]  # [R, Qmax]
    query_index = np.where(valid, s.query_start_loc[:r, None] + rows[None, :], 0).astype(np.int32)
    visible = valid[:, :, None] & (cols[None, None, :] <= (start[:, None] + rows[None, :])[:, :, None])
    mask = np.where(visible, 0.0, NEG).astype(np.float32).reshape(r, qmax, 1, lmax)
    output_index = (np.arange(r)[:, None] * qmax + rows[None, :])[valid].astype(np.int32)
    return BatchInputs(
        input_ids=s.input_ids,
        positions=s.positions,
        slot_mapping=s.slot_mapping,
        query_index=query_index.reshape(-1),
        context_slots=context.reshape(-1),
        mask=mask,
        output_index=output_index,
        sample_index=s.sample_index,
        num_requests=r,
        max_query=qmax,
        max_context=lmax,
    )
