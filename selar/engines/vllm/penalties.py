"""Vendor penalties in the vLLM plugin, applied by the plugin itself.

vLLM's sampler runs the logits processors that can change the greedy token (the plugin's among
them) before its own penalties (`vllm/v1/sample/sampler.py`: bad words, these processors, then
repetition, frequency, presence penalties, then temperature and the filters). A method needs
the penalised distribution, so the plugin applies a request's penalties to the logits before the
method's step, from per-row counts it keeps (the decode loop's `selar.sampling.apply_penalties`,
vLLM's arithmetic). selar's runner leaves vLLM's own penalties at their defaults; a request sent
to `vllm serve` with penalties has them applied again by vLLM after the plugin forced its token,
which cannot change that token (every other logit is -inf).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ...sampling import apply_penalties, token_counts, token_mask


def add_row(t: dict[str, Tensor], i: int, cfg: Any, prompt: Sequence[int], output: Sequence[int], vocab: int) -> None:
    """Row `i` of the state's tensors `t` (a new request, or a preempted one resuming with its
    output so far): its generated-token counts and its prompt's tokens, allocated on first use."""
    if "pen_counts" not in t:
        if not cfg.penalised:
            return
        cap, dev = t["step"].shape[0], t["step"].device
        t["pen_counts"] = torch.zeros(cap, vocab, dtype=torch.int32, device=dev)
        t["pen_prompt"] = torch.zeros(cap, vocab, dtype=torch.bool, device=dev)
    dev = t["step"].device
    t["pen_counts"][i] = token_counts([output], vocab, dev)[0]
    t["pen_prompt"][i] = token_mask([prompt], vocab, dev)[0]


def penalised(t: dict[str, Tensor], rows: Tensor, logits: Tensor, cfg: Any) -> Tensor:
    """These rows' logits with their group's penalties (as they are when it has none)."""
    if not cfg.penalised:
        return logits
    prompt = t["pen_prompt"][rows] if cfg.repetition_penalty != 1.0 else None
    return apply_penalties(logits, t["pen_counts"][rows], prompt, cfg)


def count(t: dict[str, Tensor], rows: Tensor, tokens: Tensor, real: Tensor) -> None:
    """Count the tokens these rows emit (on real samples only)."""
    if "pen_counts" in t:
        t["pen_counts"].index_put_((rows, tokens), real.int(), accumulate=True)
