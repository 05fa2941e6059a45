"""Soft Thinking (Zhang et al. 2025): every reasoning step is soft.

p_t (temperature, top-k, top-p) -> `mix_min_p` relative to the top probability -> the `max_topk`
most probable, renormalised; feed sum p E(v); the recorded token is the top-1. Reasoning ends
when that top-1 is </think>, or by the "cold stop": the entropy of the full tempered
distribution stays below `cold_stop_entropy` for `patience` consecutive steps, which injects
</think>. After reasoning, ordinary discrete sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check_range
from .base import State, StepContext, StepOutput, VocabInfo, full_entropy, token_or_mixture, topk_entropy


@dataclass
class SoftThinkingOptions:
    max_topk: int = 10
    mix_min_p: float = 0.001  # min-p of the mixture, relative to its top probability
    cold_stop: bool = True
    cold_stop_entropy: float = 0.01
    patience: int = 256

    def __post_init__(self) -> None:
        check_range("max_topk", self.max_topk, 1, kind=int)
        check_range("mix_min_p", self.mix_min_p, 0.0, 1.0)
        check_range("cold_stop_entropy", self.cold_stop_entropy, 0.0)
        check_range("patience", self.patience, 1, kind=int)


class SoftThinking:
    name = "soft-thinking"

    def __init__(self, options: SoftThinkingOptions, vocab: VocabInfo):
        self.o = options
        self.think_end = vocab.think_end
        self.num_candidates = max(options.max_topk, 3)

    def init_state(self, n: int, device: torch.device) -> State:
        return {"streak": torch.zeros(n, dtype=torch.long, device=device)}  # consecutive cold steps

    def step(self, ctx: StepContext, state: State) -> StepOutput:
        o = self.o
        p = ctx.cand_probs[:, : o.max_topk]
        ids = ctx.cand_ids[:, : o.max_topk]
        p = torch.where(p >= o.mix_min_p * p[:, :1], p, torch.zeros_like(p))
        p = p / p.sum(-1, keepdim=True)
        top1 = ids[:, 0]
        r = ctx.in_scope
        tokens = torch.where(r, top1, ctx.sampled)
        streak = state["streak"]
        if self.think_end is not None and o.cold_stop:
            cold = full_entropy(ctx.logits, ctx.temperature) < o.cold_stop_entropy
            streak = torch.where(cold & r, streak + 1, torch.zeros_like(streak))
            tokens = torch.where(r & (streak >= o.patience), torch.full_like(tokens, self.think_end), tokens)
        soft = r & (tokens == top1)  # the scope rules (selar.scope) make an emitted </think> plain
        return StepOutput(
            tokens=tokens,
            inputs=token_or_mixture(soft, tokens, ids, p),
            soft=soft,
            entropy=topk_entropy(ctx.cand_probs, 3),
            state={"streak": streak},
        )
