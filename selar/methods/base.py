"""The one protocol every decoding method implements.

A method sees, per step, the raw logits and the sampling distribution of the running rows,
and answers with the token each row emits and the next input of each row, described as a
mixture of token embeddings (`Mixture`). It never touches the model, the cache or the
embedding table: the engine embeds the mixture. Its per-row state is a dict of tensors with
the batch first, created by `init_state` and returned by `step`; the loop prunes finished rows
from it and appends rows that join, without knowing what it holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import torch
from torch import Tensor

# a method's per-row state: tensors with the batch first
State = dict[str, Tensor]

# what an engine may be asked to feed as a row's next input (MethodSpec.inputs, Capabilities.inputs)
INPUT_KINDS = ("token", "sparse", "dense", "hidden")


@dataclass
class Mixture:
    """Next input of each row: `sum_j weights[b, j] * E(ids[b, j])` when sparse (`ids` given,
    weights (B, M)), or `weights[b] @ E` over the whole vocabulary when dense (`ids` None,
    weights (B, V)). A plain token is the mixture (ids=[[t]], weights=[[1.0]])."""

    ids: Optional[Tensor]
    weights: Tensor
    # third input kind: rows where True take the engine's last hidden state of the row instead
    # (through the model's latent projection, if any); only for methods with needs_hidden
    latent: Optional[Tensor] = None

    @staticmethod
    def of_tokens(tokens: Tensor) -> Mixture:
        return Mixture(tokens[:, None], torch.ones(tokens.shape[0], 1, device=tokens.device))

    @property
    def dense(self) -> bool:
        return self.ids is None

    def select(self, keep: Tensor) -> Mixture:
        return Mixture(
            None if self.ids is None else self.ids[keep],
            self.weights[keep],
            None if self.latent is None else self.latent[keep],
        )


@dataclass
class VocabInfo:
    """What a method may need to know about the vocabulary."""

    size: int
    think_start: Optional[int] = None
    think_end: Optional[int] = None
    symbol_mask: Optional[Tensor] = None  # (V,) bool: "math symbol" tokens (lazy, see symbols.py)
    tokenizer: Any = None
    latent: Any = None  # the model's latent-reasoning heads (selar.train), if it has them

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))


@dataclass
class StepContext:
    logits: Tensor  # (B, V) float32 raw logits of the running rows
    cand_ids: Tensor  # (B, C) the candidates of p_t, most probable first
    cand_probs: Tensor  # (B, C) p_t on them (0 where filtered out); each row sums to 1
    sampled: Tensor  # (B,) token drawn from p_t (its argmax when greedy)
    in_scope: Tensor  # (B,) bool: the row is inside its soft scope (see selar.scope; e.g. the reasoning)
    step: Tensor  # (B,) long: 0-based index of the token each row is emitting
    max_new_tokens: Tensor  # (B,) long: each row's token budget
    temperature: float  # temperature of p_t (1.0 when greedy)
    hidden: Optional[Tensor] = None  # (B, D) last hidden states, only for methods with needs_hidden
    seeds: Optional[Tensor] = None  # (B,) long: each row's seed, for a method's own noise (methods.noise)

    def row_seeds(self) -> Tensor:
        """The rows' seeds (0 for every row when the caller gave none)."""
        return self.seeds if self.seeds is not None else torch.zeros_like(self.step)


@dataclass
class StepOutput:
    tokens: Tensor  # (B,) the emitted tokens (the visible text)
    inputs: Mixture  # the next input of each row
    soft: Tensor  # (B,) bool: the input is not a plain token (a mixture, a blend, a hidden state)
    entropy: Optional[Tensor] = None  # (B,) the method's uncertainty signal, for traces
    stop: Optional[Tensor] = None  # (B,) bool: the method ends these rows
    state: Optional[State] = None  # the new per-row state (None: unchanged)


class Method(Protocol):
    """One decoding strategy with fixed options; stateless itself (state lives in the dict)."""

    name: str
    num_candidates: int  # how many candidates of p_t the method reads
    # a method may set `needs_hidden = True`: it then gets ctx.hidden and may feed hidden states
    # back (Mixture.latent); engines without `supports_hidden` refuse it

    def init_state(self, n: int, device: torch.device) -> State: ...
    def step(self, ctx: StepContext, state: State) -> StepOutput: ...


def topk_entropy(cand_probs: Tensor, k: int) -> Tensor:
    """Normalised entropy of p_t renormalised on its k most probable tokens, in [0, 1]."""
    p = cand_probs[:, :k]
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
    h: Tensor = -torch.special.xlogy(p, p).sum(-1) / math.log(k)
    return h


def full_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy (nats) of softmax(logits / temperature) over the whole vocabulary."""
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def token_or_mixture(soft: Tensor, tokens: Tensor, ids: Tensor, weights: Tensor) -> Mixture:
    """Rows where `soft`: the mixture (ids, weights); other rows: their token."""
    m = ids.shape[1]
    plain_ids = tokens[:, None].expand(-1, m)
    plain_w = torch.zeros_like(weights)
    plain_w[:, 0] = 1.0
    s = soft[:, None]
    return Mixture(torch.where(s, ids, plain_ids), torch.where(s, weights, plain_w))
