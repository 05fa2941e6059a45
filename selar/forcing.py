"""The answer forced at a token budget, as SwiR's evaluation does (`SamplingConfig.force_answer_at`).

A row that has generated `force_answer_at` tokens without stopping is not finished: its next
steps emit the tokens of `FORCED_ANSWER` one by one (the drawn token is overridden and fed
plainly), preceded by `</think>` when the row is a thinking model's whose reasoning is still open
(no `</think>` in its prompt's last think block nor emitted yet); then it decodes freely for at
most `forced_answer_tokens` more tokens, still plainly, and ends ("length", or earlier on a stop id).
`max_new_tokens` (and the model's context) stays a row's hard limit: where the forced text and the
answer would not fit after the budget, the answer is forced sooner (`RowOutput.forced_at` says when).
Its soft scope closes at the budget, so the scope rules (`selar.scope.scope_step`) feed every
later input plainly. The rule lives here once; the decode loop (`selar.decode.DecodeSession`)
calls it. Per-row tensors, no per-row Python work per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from .config import SamplingConfig

FORCED_ANSWER = "\n\nThe final answer is"  # SwiR's evaluation: "</think>\n\nThe final answer is"
THINK_CLOSE = "</think>"


@dataclass
class ForcedAnswer:
    """The forced texts of one session as token ids: `ids` (2, L) long, row 0 the answer text and
    row 1 `</think>` then the answer text (for rows whose reasoning is open; the same as row 0
    on a model without `</think>`), padded with -1; `lengths` (2,) their lengths."""

    ids: Tensor
    lengths: Tensor
    budget: int  # force_answer_at
    forced_answer_tokens: int
    think_end: Optional[int]

    @property
    def longest(self) -> int:
        return int(self.lengths.max())

    def to(self, device: torch.device) -> ForcedAnswer:
        if self.ids.device != device:
            self.ids, self.lengths = self.ids.to(device), self.lengths.to(device)
        return self

    def plan(self, limits: Sequence[int]) -> list[int]:
        """The step each row's answer is forced at, for rows of at most `limits` tokens (their
        max_new_tokens within the model's context, which stays a hard limit): `force_answer_at`,
        or sooner where the longest forced text and `forced_answer_tokens` would not fit."""
        extra = self.longest + self.forced_answer_tokens
        return [max(0, min(self.budget, m - extra)) for m in limits]

    def open_at_start(self, open_rows: Sequence[bool], device: torch.device) -> Tensor:
        """(n,) bool: rows whose reasoning is open when they join (only on a model with `</think>`)."""
        return torch.tensor([bool(o) and self.think_end is not None for o in open_rows], device=device)


def forced_answer(tokenizer: Any, think_end: Optional[int], cfg: SamplingConfig) -> ForcedAnswer:
    """The session's forced texts, tokenized once (no special tokens added)."""
    plain = tokenizer.encode(FORCED_ANSWER, add_special_tokens=False)
    closing = (
        tokenizer.encode(THINK_CLOSE + FORCED_ANSWER, add_special_tokens=False) if think_end is not None else plain
    )
    width = max(len(plain), len(closing))
    ids = torch.full((2, width), -1, dtype=torch.long)
    for i, t in enumerate((plain, closing)):
        ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    lengths = torch.tensor([len(plain), len(closing)], dtype=torch.long)
    return ForcedAnswer(ids, lengths, cfg.force_answer_at, cfg.forced_answer_tokens, think_end)


def close_scope(rows: dict[str, Tensor]) -> None:
    """Close the soft scope of the rows at or past their budget (before the method's step, so the
    method and the scope rules both see it closed)."""
    rows["in_scope"] = rows["in_scope"] & (rows["step"] < rows["force_at"])


def force_tokens(fa: ForcedAnswer, rows: dict[str, Tensor], tokens: Tensor) -> Tensor:
    """This step's emitted tokens (B,) with the forced ones in place, for rows inside their forced
    text. A row reaching its budget takes its text now (with `</think>` if its reasoning is open)
    and its limit is set to its budget + its text + `forced_answer_tokens`; `rows["open"]` then follows
    the emitted tokens. Vectorised: no host sync."""
    step, at = rows["step"], rows["force_at"]
    start = step == at
    variant = rows["open"].long()
    rows["forced"] = torch.where(start[:, None], fa.ids[variant], rows["forced"])
    own = at + fa.lengths[variant] + fa.forced_answer_tokens
    rows["limit"] = torch.where(start, torch.minimum(rows["limit"], own), rows["limit"])
    pos = (step - at).clamp(0, fa.ids.shape[1] - 1)
    forced = rows["forced"].gather(1, pos[:, None])[:, 0]
    inside = (step >= at) & (forced >= 0) & (step - at < fa.ids.shape[1])
    out = torch.where(inside, forced, tokens)
    if fa.think_end is not None:
        rows["open"] = rows["open"] & (out != fa.think_end)
    return out


def forced_rows(steps: Sequence[int], force_at: Sequence[int]) -> list[Optional[int]]:
    """Each finished row's budget when it was forced (it emitted forced tokens), else None."""
    return [a if n > a else None for n, a in zip(steps, force_at)]
