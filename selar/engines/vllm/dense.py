"""Dense soft inputs in the vLLM plugin: a row's next input `w @ E` over the whole vocabulary
(SwiR's `softmax(z) @ E`, blended with a think token at its switches).

The logits processor keeps, each step, the weights of only the rows that go soft (`put`: one
float32 (rows, V) block, and the row -> block index in the state's `pend_dense` column, which
follows vLLM's row moves with the state's other columns); the model's forward embeds them with
one (rows, V) x (V, d) product (`embed`). E is the model's own token embedding: its weight matrix
times the scale its `embed_input_ids` applies (e.g. Gemma's sqrt(d)), checked once on a probe of
ids against `embed_input_ids` itself; where the check fails (a sharded or quantised embedding, a
lookup that is not a scaled row), the table is `embed_input_ids(arange(V))`, built once.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

PROBE = 64  # ids checked against embed_input_ids when the table is the embedding's weight


class DenseInputs:
    """This step's dense soft inputs (written by the logits processor, read by the forward)."""

    def __init__(self) -> None:
        self.parts: list[Tensor] = []
        self.count = 0
        self.block: Optional[Tensor] = None
        self.table: Optional[tuple[Tensor, float]] = None  # (E's matrix, scale), found on first use

    def reset(self, slot: Tensor) -> None:
        """A new step: no row has a dense input yet (`slot`: the state's pend_dense column)."""
        if self.count:
            slot.fill_(-1)
        self.parts, self.count, self.block = [], 0, None

    def put(self, slot: Tensor, rows: Tensor, soft: Tensor, weights: Tensor) -> None:
        """Keep the weights (len(rows), V) of the `rows` where `soft`, for their next forward."""
        keep = soft.nonzero()[:, 0]
        n = keep.numel()
        if not n:
            return
        slot[rows[keep]] = torch.arange(self.count, self.count + n, device=slot.device)
        self.parts.append(weights[keep].float())
        self.count += n

    def embed(self, model: Any, emb: Tensor, tokens: Tensor, slot: Tensor) -> None:
        """Replace, in `emb`, the rows `tokens` whose batch row has a dense input (`slot` >= 0) by
        `w @ E` (in place; one product for all of them)."""
        if not self.count:
            return
        if self.block is None:
            self.block = torch.cat(self.parts) if len(self.parts) > 1 else self.parts[0]
        dense = (slot >= 0).nonzero()[:, 0]
        if not dense.numel():
            return
        w = self.block[slot[dense]]
        if self.table is None:
            self.table = embedding_table(model, w.shape[1])
        table, scale = self.table
        mixed = w.to(table.dtype) @ table
        emb[tokens[dense]] = (mixed if scale == 1.0 else mixed * scale).to(emb.dtype)


@torch.no_grad()
def embedding_table(model: Any, vocab: int) -> tuple[Tensor, float]:
    """(T, s) with E(v) = s * T[v] for every token v < `vocab`, as `model.embed_input_ids` embeds it."""
    weight = _lookup_weight(model)
    if weight is not None and weight.shape[0] >= vocab:
        probe = torch.linspace(0, vocab - 1, min(PROBE, vocab), device=weight.device).long()
        got = model.embed_input_ids(probe).float()
        rows = weight[probe].float()
        if got.shape == rows.shape:
            eps = 4 * torch.finfo(weight.dtype).eps
            scale = float((got * rows).sum() / (rows * rows).sum().clamp_min(1e-30))
            scale = 1.0 if abs(scale - 1.0) <= eps else scale
            if bool(((got - scale * rows).abs() <= eps * got.abs()).all()):
                return weight[:vocab], scale
    device = next(model.parameters()).device
    return model.embed_input_ids(torch.arange(vocab, device=device)), 1.0


def _lookup_weight(model: Any) -> Optional[Tensor]:
    """The weight of the model's token embedding module (`...embed_tokens`), when it is a plain
    floating-point matrix holding the whole vocabulary on this process."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "embed_tokens":
            w = getattr(module, "weight", None)
            if isinstance(w, Tensor) and w.dim() == 2 and w.is_floating_point() and getattr(module, "tp_size", 1) == 1:
                return w
            return None
    return None
