"""ThinkRouter (Xu et al. 2026, arXiv 2602.11683): confidence-aware routing between latent and
discrete thinking, the inverse of an entropy gate.

Per row and reasoning step, with the confidence c_t = max_v p_t(v) (the top probability of the
sampling distribution):
  c_t <  tau: discrete step: emit y_t ~ p_t and feed E(y_t);
  c_t >= tau: latent step: feed Soft Thinking's mixture sum p(v) E(v) over the `max_topk` most
              probable tokens (after `mix_min_p` relative to the top), renormalised; the recorded
              token is the top-1.
Soft Thinking's cold stop ends the reasoning (the paper uses it too). The paper picks tau on a
validation set per model; the default 0.5 here is ours (calibrate it like SeLaR's tau).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check_range
from ..errors import ConfigError
from .base import State, StepContext, StepOutput, VocabInfo, token_or_mixture
from .soft_thinking import SoftThinking, SoftThinkingOptions, mixture_probs


@dataclass
class ThinkRouterOptions:
    tau: float = 0.5  # confidence threshold on the top probability of p_t: latent at or above it
    max_topk: int = 10
    mix_min_p: float = 0.001
    cold_stop: bool = True
    cold_stop_entropy: float = 0.01
    patience: int = 256

    def __post_init__(self) -> None:
        check_range("tau", self.tau, 0.0, 1.0)
        if not isinstance(self.cold_stop, bool):
            raise ConfigError(f"cold_stop must be true or false, got {self.cold_stop!r}")
        self.soft_options()  # validates the rest

    def soft_options(self) -> SoftThinkingOptions:
        return SoftThinkingOptions(self.max_topk, self.mix_min_p, self.cold_stop, self.cold_stop_entropy, self.patience)


class ThinkRouter:
    name = "thinkrouter"

    def __init__(self, options: ThinkRouterOptions, vocab: VocabInfo):
        self.o = options
        self.soft = SoftThinking(options.soft_options(), vocab)
        self.num_candidates = self.soft.num_candidates

    def init_state(self, n: int, device: torch.device) -> State:
        return self.soft.init_state(n, device)

    def step(self, ctx: StepContext, state: State) -> StepOutput:
        out = self.soft.step(ctx, state)  # latent everywhere in scope, with the cold stop
        ids, p = mixture_probs(ctx, self.o.max_topk, self.o.mix_min_p)
        confidence = ctx.cand_probs[:, 0]
        discrete = ctx.in_scope & (confidence < self.o.tau) & out.soft  # not where </think> was injected
        tokens = torch.where(discrete, ctx.sampled, out.tokens)
        soft = out.soft & ~discrete
        return StepOutput(
            tokens=tokens,
            inputs=token_or_mixture(soft, tokens, ids, p),
            soft=soft,
            entropy=confidence,
            state=out.state,
        )
