"""Soft Thinking (Zhang et al. 2025): every reasoning step is soft; optionally randomized
(Randomized / Stochastic Soft Thinking, Wu et al. 2025, arXiv 2508.03440).

p_t (temperature, top-k, top-p) -> `mix_min_p` relative to the top probability -> the `max_topk`
most probable, renormalised: p; feed sum w E(v) with w = p; the recorded token is the top-1.
Reasoning ends when that token is </think>, or by the "cold stop": the entropy of the full
tempered distribution stays below `cold_stop_entropy` for `patience` consecutive steps, which
injects </think>. After reasoning, ordinary discrete sampling.

`noise` replaces w = p by a random draw around p, seeded per row (methods.noise, its own stream):
  gumbel:    w = softmax((log p + g) / gumbel_temperature),  g ~ Gumbel(0, 1) i.i.d.
  dirichlet: w ~ Dirichlet(dirichlet_concentration * p)  (mean p; larger concentration, less noise)
over the same candidates (p = 0 stays 0). The recorded token is then the argmax of w (for gumbel
the Gumbel-max draw, a sample of p): the paper shows the model follows the dominant component of
its soft input, so that is the token the soft step stands for. Defaults (gumbel_temperature 0.5,
dirichlet_concentration 1.0) are ours; the paper tunes them per model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import check_range
from ..errors import ConfigError
from .base import State, StepContext, StepOutput, VocabInfo, full_entropy, token_or_mixture, topk_entropy
from .noise import SOFT_THINKING_NOISE, dirichlet_weights, gumbel, hash_uniform

NOISES = ("none", "gumbel", "dirichlet")


@dataclass
class SoftThinkingOptions:
    max_topk: int = 10
    mix_min_p: float = 0.001  # min-p of the mixture, relative to its top probability
    cold_stop: bool = True
    cold_stop_entropy: float = 0.01
    patience: int = 256
    noise: str = "none"  # "gumbel" or "dirichlet": Randomized Soft Thinking
    gumbel_temperature: float = 0.5
    dirichlet_concentration: float = 1.0

    def __post_init__(self) -> None:
        check_range("max_topk", self.max_topk, 1, kind=int)
        check_range("mix_min_p", self.mix_min_p, 0.0, 1.0)
        check_range("cold_stop_entropy", self.cold_stop_entropy, 0.0)
        check_range("patience", self.patience, 1, kind=int)
        if self.noise not in NOISES:
            raise ConfigError(f"noise must be one of {', '.join(NOISES)}, got {self.noise!r}")
        check_range("gumbel_temperature", self.gumbel_temperature, 0.0, lo_open=True)
        check_range("dirichlet_concentration", self.dirichlet_concentration, 0.0, lo_open=True)
        if not isinstance(self.cold_stop, bool):
            raise ConfigError(f"cold_stop must be true or false, got {self.cold_stop!r}")


def mixture_probs(ctx: StepContext, max_topk: int, mix_min_p: float) -> tuple[Tensor, Tensor]:
    """(ids, p): the `max_topk` most probable candidates after the relative min-p, renormalised."""
    p = ctx.cand_probs[:, :max_topk]
    p = torch.where(p >= mix_min_p * p[:, :1], p, torch.zeros_like(p))
    return ctx.cand_ids[:, :max_topk], p / p.sum(-1, keepdim=True)


class SoftThinking:
    name = "soft-thinking"

    def __init__(self, options: SoftThinkingOptions, vocab: VocabInfo):
        self.o = options
        self.think_end = vocab.think_end
        self.num_candidates = max(options.max_topk, 3)

    def init_state(self, n: int, device: torch.device) -> State:
        return {"streak": torch.zeros(n, dtype=torch.long, device=device)}  # consecutive cold steps

    def weights(self, ctx: StepContext, p: Tensor) -> Tensor:
        """The mixture weights over the candidates, most probable first (column 0 the top-1
        unless noise reorders them)."""
        o = self.o
        if o.noise == "none":
            return p
        if o.noise == "gumbel":
            g = gumbel(hash_uniform(ctx.row_seeds(), ctx.step, p.shape[1], SOFT_THINKING_NOISE))
            w = torch.softmax((torch.log(p.double()) + g) / o.gumbel_temperature, dim=-1)
        else:
            w = dirichlet_weights(o.dirichlet_concentration * p.double(), ctx.row_seeds(), ctx.step,
                                  SOFT_THINKING_NOISE)  # fmt: skip
        return w.to(p.dtype)

    def step(self, ctx: StepContext, state: State) -> StepOutput:
        o = self.o
        ids, p = mixture_probs(ctx, o.max_topk, o.mix_min_p)
        w = self.weights(ctx, p)
        top = ids[:, 0] if o.noise == "none" else ids.gather(1, w.argmax(-1, keepdim=True))[:, 0]
        r = ctx.in_scope
        tokens = torch.where(r, top, ctx.sampled)
        streak = state["streak"]
        if self.think_end is not None and o.cold_stop:
            cold = full_entropy(ctx.logits, ctx.temperature) < o.cold_stop_entropy
            streak = torch.where(cold & r, streak + 1, torch.zeros_like(streak))
            tokens = torch.where(r & (streak >= o.patience), torch.full_like(tokens, self.think_end), tokens)
        soft = r & (tokens == top)  # the scope rules (selar.scope) make an emitted </think> plain
        return StepOutput(
            tokens=tokens,
            inputs=token_or_mixture(soft, tokens, ids, w),
            soft=soft,
            entropy=topk_entropy(ctx.cand_probs, 3),
            state={"streak": streak},
        )
