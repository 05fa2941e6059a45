"""Multiplex Thinking (Tang et al. 2026, arXiv 2601.08808), the training-free inference variant:
at each reasoning step K tokens are drawn independently from p_t and their embeddings are merged
into one "multiplex token".

Per row and step inside the soft scope: k_1 = y_t (the sampler's draw, the emitted token),
k_2..k_K ~ p_t i.i.d. (their own seeded stream, methods.noise); feed sum_i w_i E(k_i) with
  merge=weighted: w_i = p_t(k_i) / sum_j p_t(k_j)   (the K-hot vector reweighted by p_t, normalised)
  merge=mean:     w_i = 1 / K
(a token drawn twice counts twice). When all K draws agree the input is that token's embedding
(not counted as a soft step). The paper's multiplex token has no single text; the visible text
here is k_1, a plain draw of p_t, so reasoning ends when k_1 is </think> (the scope rules then
feed it plainly) and the text is distributed as CoT's. Greedy sampling emits the argmax as k_1;
the other draws still sample p_t (else every draw would agree).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check_range
from ..errors import ConfigError
from .base import State, StepContext, StepOutput, VocabInfo, token_or_mixture, topk_entropy
from .noise import MULTIPLEX_SAMPLES, gumbel, hash_uniform

MERGES = ("weighted", "mean")


@dataclass
class MultiplexOptions:
    width: int = 3  # K: tokens drawn per step
    merge: str = "weighted"  # "weighted" (by p_t) or "mean"

    def __post_init__(self) -> None:
        check_range("width", self.width, 1, kind=int)
        if self.merge not in MERGES:
            raise ConfigError(f"merge must be one of {', '.join(MERGES)}, got {self.merge!r}")


class Multiplex:
    name = "multiplex"

    def __init__(self, options: MultiplexOptions, vocab: VocabInfo):
        self.o = options
        if options.width > vocab.size:
            raise ConfigError(f"width must be at most the vocabulary size {vocab.size}, got {options.width}")
        self.num_candidates = max(options.width, 3)

    def init_state(self, n: int, device: torch.device) -> State:
        return {}

    def step(self, ctx: StepContext, state: State) -> StepOutput:
        b, c = ctx.cand_probs.shape
        extra = self.o.width - 1
        u = hash_uniform(ctx.row_seeds(), ctx.step, extra * c, MULTIPLEX_SAMPLES).view(b, extra, c)
        score = torch.log(ctx.cand_probs.double())[:, None, :] + gumbel(u)
        col = score.argmax(-1)  # (B, K - 1) candidate columns of the other draws
        ids = torch.cat([ctx.sampled[:, None], ctx.cand_ids.gather(1, col)], dim=1)
        if self.o.merge == "mean":
            w = torch.full(ids.shape, 1.0 / self.o.width, device=ids.device)
        else:
            p_first = ((ctx.cand_ids == ctx.sampled[:, None]) * ctx.cand_probs).sum(-1, keepdim=True)
            p = torch.cat([p_first, ctx.cand_probs.gather(1, col)], dim=1)
            w = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
        soft = ctx.in_scope & (ids != ids[:, :1]).any(-1)
        return StepOutput(
            tokens=ctx.sampled,
            inputs=token_or_mixture(soft, ctx.sampled, ids, w),
            soft=soft,
            entropy=topk_entropy(ctx.cand_probs, 3),
        )
