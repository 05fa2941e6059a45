"""A scripted engine: returns given logits step after step and records the inputs it is fed."""

from __future__ import annotations

import math

import torch

from selar.config import SamplingConfig
from selar.decode import decode
from selar.methods.base import VocabInfo


class ScriptedEngine:
    def __init__(self, logits: torch.Tensor):  # (B, T, V)
        self.logits = logits
        self.rows = torch.arange(logits.shape[0])
        self.t = 0
        self.fed = []  # per step: (original rows, Mixture)

    def add(self, prompts):
        return self.logits[self.rows, 0]

    def reset(self):
        self.rows = self.rows[:0]

    def step(self, mix):
        self.fed.append((self.rows.clone(), mix))
        self.t += 1
        return self.logits[self.rows, min(self.t, self.logits.shape[1] - 1)]

    def select(self, keep):
        self.rows = self.rows[keep]


def peaked_logits(V: int, top: int, entropy_nats: float | None = None, m: int = 1) -> torch.Tensor:
    """Logits whose softmax is uniform over `m` tokens starting at `top` (entropy log m), or,
    with m = 1, puts nearly all mass on `top`."""
    z = torch.full((V,), -30.0)
    z[top : top + m] = 0.0
    return z


def run(method, logits: torch.Tensor, *, think_end=None, reasoning_scope=True, stop_ids=(999,), **cfg):
    eng = ScriptedEngine(logits)
    b, t, _ = logits.shape
    cfg = SamplingConfig(**{"temperature": 0.0, "max_new_tokens": t, "top_k": 0, "top_p": 1.0, **cfg})
    rows = decode(
        eng,
        [[1]] * b,
        method,
        cfg,
        seeds=[0] * b,
        stop_ids=list(stop_ids),
        think_end=think_end,
        reasoning_scope=reasoning_scope,
    )
    return rows, eng


def vocab(V: int, think_start=None, think_end=None, tokenizer=None) -> VocabInfo:
    return VocabInfo(size=V, think_start=think_start, think_end=think_end, tokenizer=tokenizer)


LOG = math.log
