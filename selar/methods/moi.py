"""Mixture of Inputs (Zhuang et al. 2025, arXiv 2505.14827): the sampled token blended with the
distribution it was drawn from, as a Bayesian posterior mean.

Per row and step inside the soft scope (soft_scope=all: every step, as in the paper): p^ = p_t
renormalised on its k most probable tokens, H^ = H(p^) / log k, y_t the emitted (sampled) token.
With p^ the Dirichlet prior's mean and y_t the observation, the paper's input (its Eq. 5) is
  h_t = sum_v w(v) E(v),  w(v) = (H^ p^(v) + (beta + 1 - H^) [v = y_t]) / (beta + 1),
a mixture over y_t (its own slot, first: y_t need not be among the k) and the k tokens (the
weights sum to 1). beta is the concentration: larger keeps more of the sampled token, 0 the most of the
distribution. The reference code mixes over the top 20 log-probabilities; the paper writes the
whole vocabulary: `k` (default 20) chooses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check_range
from .base import State, StepContext, StepOutput, VocabInfo, token_or_mixture, topk_entropy


@dataclass
class MoIOptions:
    beta: float = 1.0  # concentration: weight of the sampled token against the distribution
    k: int = 20  # the distribution is p_t on its k most probable tokens

    def __post_init__(self) -> None:
        check_range("beta", self.beta, 0.0)
        check_range("k", self.k, 2, kind=int)


class MoI:
    name = "moi"

    def __init__(self, options: MoIOptions, vocab: VocabInfo):
        self.o = options
        self.k = min(options.k, vocab.size)
        self.num_candidates = self.k + 1  # the mixture's width: k tokens and the sampled one

    def init_state(self, n: int, device: torch.device) -> State:
        return {}

    def step(self, ctx: StepContext, state: State) -> StepOutput:
        k, beta = self.k, self.o.beta
        p = ctx.cand_probs[:, :k]
        p_hat = p / p.sum(-1, keepdim=True)
        h = topk_entropy(ctx.cand_probs, k)[:, None]
        w = torch.cat([beta + 1.0 - h, h * p_hat], dim=1) / (beta + 1.0)  # column 0: the sampled token
        ids = torch.cat([ctx.sampled[:, None], ctx.cand_ids[:, :k]], dim=1)
        soft = ctx.in_scope
        inputs = token_or_mixture(soft, ctx.sampled, ids, w)
        return StepOutput(tokens=ctx.sampled, inputs=inputs, soft=soft, entropy=h[:, 0])
