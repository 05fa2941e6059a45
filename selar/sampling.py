"""The sampling distribution p_t on a truncated candidate set, and a batch-independent,
seeded sampler.

Filters follow Hugging Face: temperature, top-k, top-p, min-p, renormalised. Top-k is applied
first with `torch.topk`, so top-p, min-p and the draw work on C candidates instead of the whole
vocabulary (with top_k = 0 the candidates are the full vocabulary, sorted: exact but slow).
The draw is a Gumbel-max over the candidates with noise hashed from (row seed, step, rank), so a
row's tokens depend only on its own seed and logits, never on the other rows of the batch.

Vendor penalties (`apply_penalties`) change the logits before all of this, as vLLM's sampler
does: repetition (tokens of the prompt or the output), then frequency, then presence (tokens of
the output); from per-row token counts, so a row's logits never depend on the other rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

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


def token_mask(rows: Sequence[Sequence[int]], vocab: int, device: Union[str, torch.device] = "cpu") -> Tensor:
    """(B, vocab) bool: which tokens each row holds (e.g. a prompt's, for the repetition penalty)."""
    width = max((len(r) for r in rows), default=0) + 1  # a padding column at `vocab`, dropped
    ids = torch.full((len(rows), width), vocab, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    mask = torch.zeros(len(rows), vocab + 1, dtype=torch.bool)
    return mask.scatter_(1, ids, True)[:, :vocab].to(device)


def token_counts(rows: Sequence[Sequence[int]], vocab: int, device: Union[str, torch.device] = "cpu") -> Tensor:
    """(B, vocab) int32: how often each row holds each token (e.g. a resumed row's output so far)."""
    counts = torch.zeros(len(rows), vocab, dtype=torch.int32)
    for i, r in enumerate(rows):
        if len(r):
            counts[i] = torch.bincount(torch.as_tensor(list(r), dtype=torch.long), minlength=vocab)[:vocab].int()
    return counts.to(device)


def apply_penalties(logits: Tensor, counts: Tensor, prompt: Optional[Tensor], cfg: SamplingConfig) -> Tensor:
    """The logits with `cfg`'s vendor penalties (a new tensor), in vLLM's order and arithmetic:
    repetition on the tokens of the prompt (`prompt`, (B, V) bool) or the output (`counts`, (B, V)
    generated-token counts): positive logits times 1/penalty, the others times penalty; then minus
    frequency_penalty * count; then minus presence_penalty once for every generated token."""
    out = logits.float().clone()
    seen = counts > 0
    if cfg.repetition_penalty != 1.0:
        hit = seen if prompt is None else seen | prompt
        pen = torch.where(hit, torch.tensor(cfg.repetition_penalty, dtype=torch.float32, device=out.device), 1.0)
        out *= torch.where(out > 0, 1.0 / pen, pen)
    if cfg.frequency_penalty != 0.0:
        out -= torch.tensor(cfg.frequency_penalty, dtype=torch.float32, device=out.device) * counts
    if cfg.presence_penalty != 0.0:
        out -= torch.tensor(cfg.presence_penalty, dtype=torch.float32, device=out.device) * seen
    return out


def sample(ids: Tensor, probs: Tensor, seeds: Tensor, steps: Union[int, Tensor]) -> Tensor:
    """Draw one token per row from (ids, probs) with per-row seeds and steps."""
    u = hash_uniform(seeds, steps, probs.shape[1])
    score = torch.log(probs.double()) + gumbel(u)
    return ids.gather(1, score.argmax(-1, keepdim=True))[:, 0]
