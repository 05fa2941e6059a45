"""The soft scope: where a row's inputs may be other than its plain token. Its rules live here
once, and every engine calls them (the shared decode loop, `selar.decode.DecodeSession`, and the
vLLM plugin's state); no method needs to know about `</think>` or answer markers.

- `scope_at_start(prompt, think_start, think_end)`: a row starts inside its scope unless its
  prompt closes a think block (a thinking model's template with thinking off ends the prompt with
  `<think>\\n\\n</think>\\n\\n`).
- `scope_step(out, in_scope, ...)`, applied after every method step: a row outside its scope, a
  row that emits `</think>`, and (soft_scope "guarded") a row whose text now holds an answer
  marker feed their emitted token plainly, so the model always sees its own `</think>`; the scope
  closes at `</think>` (when the scope is the reasoning) and at the marker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional, Union

import torch
from torch import Tensor

from .config import stop_checker, stop_tail
from .methods.base import Mixture, StepOutput


def scope_at_start(prompt: Sequence[int], think_start: Optional[int], think_end: Optional[int]) -> bool:
    """Whether a row starts inside its soft scope: not when its prompt's last think token is
    `</think>` (a closed think block); `think_end` None: always (the scope does not end)."""
    if think_end is not None:
        for t in reversed(prompt):
            if t == think_end:
                return False
            if t == think_start:
                break
    return True


def scope_step(
    out: StepOutput,
    in_scope: Tensor,
    think_end: Optional[int],
    *,
    ends_at_think: Union[bool, Tensor],
    marked: Optional[Tensor] = None,
) -> tuple[StepOutput, Tensor]:
    """A method's step made to keep the scope rules, and the rows' new scope flags.

    `out`: what the method answered for rows (B,); `in_scope` (B,) bool; `think_end`: the model's
    `</think>` id (None: it has none); `ends_at_think` (bool or (B,) bool): whether `</think>`
    closes these rows' scope (soft_scope "reasoning"/"guarded" on a thinking model); `marked`
    (B,) bool: rows whose text now holds an answer marker (the guard, see `marker_rows`).
    Rows outside their scope, rows emitting `</think>` and marked rows feed their token plainly
    and are not soft; the scope closes for rows emitting `</think>` where it ends there, and
    for marked rows. Vectorised: no host sync."""
    tok = out.tokens
    plain, closes = ~in_scope, torch.zeros_like(in_scope)
    if think_end is not None:
        at_end = tok == think_end
        plain, closes = plain | at_end, at_end & ends_at_think
    if marked is not None:
        plain, closes = plain | marked, closes | marked
    out = replace(out, inputs=plain_where(out.inputs, tok, plain), soft=out.soft & ~plain)
    return out, in_scope & ~closes


def plain_where(inputs: Mixture, tokens: Tensor, rows: Tensor) -> Mixture:
    """`inputs` with the inputs of the rows where `rows` (B,) bool replaced by their plain tokens."""
    r = rows[:, None]
    w = inputs.weights
    if inputs.ids is None:  # dense: one-hot over the vocabulary
        one = w.new_zeros(()).expand_as(w).scatter(1, tokens[:, None], 1.0)
        ids = None
    else:
        one = torch.zeros_like(w)
        one[:, 0] = 1.0
        ids = inputs.ids.clone()
        ids[:, 0] = torch.where(rows, tokens, ids[:, 0])
    latent = None if inputs.latent is None else inputs.latent & ~rows
    return Mixture(ids, torch.where(r, one, w), latent)


@dataclass
class AnswerGuard:
    """soft_scope "guarded": once a row's text holds an answer marker (e.g. `\\boxed`), its later
    inputs are plain tokens, so soft inputs cannot garble the answer. `check(ids)` says whether
    the text of these ids (a row's last `tail` tokens) holds a marker; `ends` (V,) bool marks the
    tokens that can complete one (None: any), so only rows that emitted such a token are checked."""

    check: Callable[[list[int]], bool]
    tail: int
    ends: Optional[Tensor] = None


def marker_rows(
    guard: AnswerGuard, tokens: Tensor, steps: Tensor, tok: Tensor, scoped: Tensor, index: Optional[Tensor] = None
) -> Tensor:
    """Indices of the rows still in their soft scope (`scoped`) whose text, this step's token `tok`
    (already at column `steps`) included, now holds an answer marker: only rows whose token may
    complete one have their tail decoded (`tokens`: (R, T) ids so far). `index`: each batch row's
    row of `tokens` and `steps` (default: the same), so only the rows checked are gathered."""
    may = scoped if guard.ends is None else scoped & guard.ends.to(tok.device)[tok]
    sel = may.nonzero()[:, 0]
    if sel.numel() == 0:
        return sel
    src = sel if index is None else index[sel]
    tails = row_tails(tokens, src, steps[src] + 1, torch.full_like(src, guard.tail))  # this step's token included
    return sel[torch.tensor([guard.check(t) for t in tails], dtype=torch.bool, device=tok.device)]


def marked_mask(guard: Optional[AnswerGuard], tokens: Tensor, steps: Tensor, tok: Tensor, scoped: Tensor,
                index: Optional[Tensor] = None) -> Optional[Tensor]:  # fmt: skip
    """`marker_rows` as a (B,) bool mask (None without a guard), the form `scope_step` takes."""
    if guard is None:
        return None
    return torch.zeros_like(scoped).index_fill(0, marker_rows(guard, tokens, steps, tok, scoped, index), True)


def row_tails(tokens: Tensor, rows: Tensor, n: Tensor, width: Tensor) -> list[list[int]]:
    """The last `width[j]` of the first `n[j]` tokens of each row `rows[j]` of `tokens` (R, T):
    one gather of the tails only, never a copy of whole histories."""
    w = int(width.max())
    back = torch.arange(w, device=tokens.device) - w
    tails = tokens[rows[:, None], (n[:, None] + back).clamp_min(0)].tolist()
    return [t[w - k :] for t, k in zip(tails, torch.minimum(width, n).tolist())]


def marker_end_tokens(tokens: Sequence[str], markers: Sequence[str]) -> Optional[Tensor]:
    """(V,) bool over a vocabulary given as its token strings (byte-level BPE or SentencePiece):
    the tokens that contain the last character of some marker, or are byte tokens (`<0x..>`); None
    (every token) when a marker ends in a character these vocabularies may spell otherwise."""
    last = {m[-1] for m in markers}
    if any(not (c.isascii() and c.isprintable() and not c.isspace()) for c in last):
        return None
    return torch.tensor([any(c in t for c in last) or t.startswith("<0x") for t in tokens], dtype=torch.bool)


_ENDS: dict[tuple[int, tuple[str, ...], int], tuple[object, Optional[Tensor]]] = {}


def answer_guard(tokenizer: Any, markers: Sequence[str], vocab_size: int) -> AnswerGuard:
    """The guard of a model's tokenizer for these markers. The token mask is built once per
    tokenizer and markers."""
    key = (id(tokenizer), tuple(markers), vocab_size)
    if key not in _ENDS:
        n = len(tokenizer)
        ends = marker_end_tokens(tokenizer.convert_ids_to_tokens(list(range(n))), markers)
        if ends is not None and vocab_size > n:  # ids the tokenizer does not name: always checked
            ends = torch.cat([ends, torch.ones(vocab_size - n, dtype=torch.bool)])
        _ENDS[key] = (tokenizer, ends)  # the tokenizer is kept, so its id is not reused
    return AnswerGuard(stop_checker(tokenizer, markers), stop_tail(markers), _ENDS[key][1])
