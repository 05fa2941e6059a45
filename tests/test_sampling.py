"""p_t on the truncated candidates equals Hugging Face's full-vocabulary warpers; the
seeded draw follows p_t."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from selar.config import SamplingConfig
from selar.sampling import candidates, sample


@pytest.mark.parametrize(
    "t,top_k,top_p,min_p", [(0.6, 20, 0.95, 0.0), (1.0, 50, 0.8, 0.05), (0.7, 0, 0.9, 0.0), (1.3, 5, 1.0, 0.2)]
)
def test_candidates_match_hf_warpers(t, top_k, top_p, min_p):
    torch.manual_seed(0)
    logits = torch.randn(6, 500) * 3
    cfg = SamplingConfig(temperature=t, top_k=top_k, top_p=top_p, min_p=min_p)
    ids, probs = candidates(logits, cfg)
    scores = TemperatureLogitsWarper(t)(None, logits.clone())
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    if min_p > 0:
        scores = MinPLogitsWarper(min_p)(None, scores)
    ref = torch.softmax(scores, -1)
    ours = torch.zeros_like(ref).scatter_(1, ids, probs)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_candidates_keep_extra_for_methods_but_zero_them():
    logits = torch.randn(2, 100)
    ids, probs = candidates(logits, SamplingConfig(top_k=2, top_p=1.0), need=5)
    assert ids.shape == (2, 5) and torch.all(probs[:, 2:] == 0)
    assert torch.allclose(probs.sum(-1), torch.ones(2))


def test_seeded_sampling_follows_distribution():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]]).repeat(20000, 1)
    ids = torch.arange(5).repeat(20000, 1)
    draws = sample(ids, probs, torch.arange(20000), steps=3)
    freq = torch.bincount(draws, minlength=5).double() / 20000
    assert torch.allclose(freq, probs[0].double(), atol=0.015)
    assert freq[4] == 0
    again = sample(ids, probs, torch.arange(20000), steps=3)
    assert torch.equal(draws, again)
    assert not torch.equal(draws, sample(ids, probs, torch.arange(20000), steps=4))
