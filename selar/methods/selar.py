"""SeLaR: entropy-gated soft inputs with a contrastive push away from the dominant token.

Per row and step (spec: shared/spec/methods.md):
  p^ = p_t renormalised on its k most probable tokens V_k,  H^ = H(p^) / log k.
  H^ <= tau: feed E(y_t).  Otherwise feed e~ = e + lambda * H^ * (e - E(v*)) with
  e = sum p^(v) E(v) and v* = argmax p_t, i.e. the mixture
  w(v) = (1 + lambda H^) p^(v) - lambda H^ [v = v*]   over V_k.
`push_top=m` pushes away from the m most probable tokens instead of v* alone: the anchor E(v*) is
replaced by their p^-weighted mean a = sum_{i<=m} p^(v_i) E(v_i) / sum_{i<=m} p^(v_i), so
  w(v_i) = (1 + lambda H^) p^(v_i) - lambda H^ [i <= m] p^(v_i) / sum_{j<=m} p^(v_j);
m = 1 is the paper's push (our generalisation: the issue names it, no paper defines it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check_range
from ..errors import ConfigError
from ..symbols import symbol_mask
from .base import State, StepContext, StepOutput, VocabInfo, token_or_mixture, topk_entropy

GATE_SCOPES = ("row", "batch")


@dataclass
class SeLaROptions:
    tau: float | str = 0.5  # gate threshold on the normalised top-k entropy; "auto": calibrated by selar eval
    k: int = 3  # size of the soft top-k
    push_weight: float = 1.0  # lambda of the contrastive push; 0 turns it off
    protect_symbols: bool = True  # never soft when the emitted token is a math symbol (ref)
    gate: bool = True  # False: soft at every reasoning step (ablation "no gate")
    gate_scope: str = "row"  # "batch": reference code's batch-wide gate, for comparison
    soft_target: float = 0.10  # tau=auto: the share of generated tokens to make soft
    push_top: int = 1  # m: push away from the p^-weighted mean of the m most probable tokens

    def __post_init__(self) -> None:
        if isinstance(self.tau, str) and self.tau != "auto":
            raise ConfigError(f"tau must be a number in [0, 1] or auto, got {self.tau!r}")
        if self.tau != "auto":
            check_range("tau", self.tau, 0.0, 1.0)
        check_range("soft_target", self.soft_target, 0.0, 1.0)
        check_range("k", self.k, 2, kind=int)
        check_range("push_weight", self.push_weight, 0.0)
        check_range("push_top", self.push_top, 1, kind=int)
        if self.push_top >= self.k:
            raise ConfigError(
                f"push_top must be below k={self.k} (a push away from all k tokens is zero; "
                f"push_weight=0 turns the push off), got {self.push_top!r}"
            )
        if self.gate_scope not in GATE_SCOPES:
            raise ConfigError(f"gate_scope must be one of {', '.join(GATE_SCOPES)}, got {self.gate_scope!r}")
        for name in ("protect_symbols", "gate"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")


def selar_weights(p_hat: torch.Tensor, h_norm: torch.Tensor, push_weight: float, push_top: int = 1) -> torch.Tensor:
    """Mixture weights over V_k (most probable first, so v* is column 0)."""
    c = push_weight * h_norm[:, None]
    w = (1.0 + c) * p_hat
    if push_top == 1:
        w[:, 0] -= c[:, 0]
    else:
        top = p_hat[:, :push_top]
        w[:, :push_top] -= c * top / top.sum(-1, keepdim=True)
    return w


class SeLaR:
    name = "selar"

    def __init__(self, options: SeLaROptions, vocab: VocabInfo):
        self.o = options
        if options.tau == "auto":
            raise ConfigError("tau=auto is calibrated by `selar eval` on the dataset's prompts; give tau a number here")
        if options.k > vocab.size:
            raise ConfigError(f"k must be at most the vocabulary size {vocab.size}, got {options.k}")
        self.num_candidates = options.k
        self.symbols = None
        if options.protect_symbols:
            self.symbols = (
                vocab.symbol_mask if vocab.symbol_mask is not None else symbol_mask(vocab.tokenizer, vocab.size)
            )

    def init_state(self, n: int, device: torch.device) -> State:
        if self.symbols is not None:
            self.symbols = self.symbols.to(device)
        return {}

    def step(self, ctx: StepContext, state: State) -> StepOutput:
        k = self.o.k
        p = ctx.cand_probs[:, :k]
        p_hat = p / p.sum(-1, keepdim=True)
        h_norm = topk_entropy(ctx.cand_probs, k)
        uncertain = (h_norm > float(self.o.tau)) if self.o.gate else torch.ones_like(ctx.in_scope)
        if self.o.gate_scope == "batch":
            uncertain = uncertain.any().expand_as(uncertain)
        soft = uncertain & ctx.in_scope
        if self.symbols is not None:
            soft = soft & ~self.symbols[ctx.sampled]
        w = selar_weights(p_hat, h_norm, self.o.push_weight, self.o.push_top)
        inputs = token_or_mixture(soft, ctx.sampled, ctx.cand_ids[:, :k], w)
        return StepOutput(tokens=ctx.sampled, inputs=inputs, soft=soft, entropy=h_norm)
