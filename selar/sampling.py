"""The sampling distribution p_t on a truncated candidate set, and a batch-independent,
seeded sampler.

Filters follow Hugging Face: temperature, top-k, top-p, min-p, renormalised. Top-k is applied
first with `torch.topk`, so top-p, min-p and the draw work on C candidates instead of the whole
vocabulary (with top_k = 0 the candidates are the full vocabulary, sorted: exact but slow).
The draw is a Gumbel-max over the candidates with noise hashed from (row seed, step, rank), so a
row's tokens depend only on its own seed and logits, never on the other rows of the batch.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from .config import SamplingConfig
from .methods.noise import gumbel, hash_uniform


def candidates(logits: Tensor, cfg: SamplingConfig, need: int = 1) -> tuple[Tensor, Tensor]:
    """(ids, probs), each (B, C), most probable first; probs are p_t (0 where filtered)."""
    vocab = logits.shape[-1]
    top_k = cfg.top_k if 0 < cfg.top_k < vocab else vocab
    c = min(max(top_k, need), vocab)
    temperature = cfg.temperature if cfg.temperature > 0 else 1.0
    vals, ids = torch.topk(logits, c, dim=-1, sorted=True)
    scaled = vals.float() / temperature
    if c > top_k:
        scaled[:, top_k:] = float("-inf")
    probs = torch.softmax(scaled, dim=-1)
    if cfg.top_p < 1.0:
        before = probs.cumsum(-1) - probs  # mass of the more probable candidates
        probs = torch.where(before < cfg.top_p, probs, torch.zeros_like(probs))  # keeps the top-1
    if cfg.min_p > 0.0:
        probs = torch.where(probs >= cfg.min_p * probs[:, :1], probs, torch.zeros_like(probs))
    probs = probs / probs.sum(-1, keepdim=True)
    return ids, probs


def sample(ids: Tensor, probs: Tensor, seeds: Tensor, steps: Union[int, Tensor]) -> Tensor:
    """Draw one token per row from (ids, probs) with per-row seeds and steps."""
    u = hash_uniform(seeds, steps, probs.shape[1])
    score = torch.log(probs.double()) + gumbel(u)
    return ids.gather(1, score.argmax(-1, keepdim=True))[:, 0]
