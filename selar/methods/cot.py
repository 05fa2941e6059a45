"""CoT: every step feeds the emitted token (the baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check_range
from .base import Mixture, State, StepContext, StepOutput, VocabInfo, topk_entropy


@dataclass
class CoTOptions:
    k: int = 3  # only for the traced entropy (normalised top-k entropy, as SeLaR's gate)

    def __post_init__(self) -> None:
        check_range("k", self.k, 2, kind=int)


class CoT:
    name = "cot"

    def __init__(self, options: CoTOptions, vocab: VocabInfo):
        self.o = options
        self.num_candidates = options.k

    def init_state(self, n: int, device: torch.device) -> State:
        return {}

    def step(self, ctx: StepContext, state: State) -> StepOutput:
        return StepOutput(
            tokens=ctx.sampled,
            inputs=Mixture.of_tokens(ctx.sampled),
            soft=torch.zeros_like(ctx.in_scope),
            entropy=topk_entropy(ctx.cand_probs, self.o.k),
        )
