"""How closely two engines agree on the same method: e.g. llama.cpp (quantised activations) vs
transformers (the same GGUF weights, dequantised).

Two measures over the first `max_new_tokens` tokens of each prompt, greedy:

- free-running: each engine generates on its own; the share of positions holding the same
  token. One near-tie decided differently makes the rest of the row differ, so this compounds.
- teacher-forced: engine B is fed exactly the inputs engine A's session feeds (the same tokens
  and the same soft mixtures), step by step; the share of steps where B's logits pick the same
  next token as A's, and, with `tau`/`k`, make the same entropy-gate decision (soft or not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..api import format_prompt, generate, new_session
from ..decode import run_to_end
from ..methods import make_config
from ..methods.base import topk_entropy


@dataclass
class Agreement:
    free_same: int = 0
    free_total: int = 0
    forced_same: int = 0
    forced_total: int = 0
    gate_same: int = 0
    max_logit_diff: float = 0.0

    @property
    def free(self) -> float:
        return self.free_same / max(1, self.free_total)

    @property
    def forced(self) -> float:
        return self.forced_same / max(1, self.forced_total)

    @property
    def gate(self) -> float:
        return self.gate_same / max(1, self.forced_total)

    def __str__(self) -> str:
        return (
            f"free-running {self.free_same}/{self.free_total} = {self.free:.3f}; teacher-forced next token "
            f"{self.forced_same}/{self.forced_total} = {self.forced:.3f}, gate {self.gate:.3f}; "
            f"max |logit diff| {self.max_logit_diff:.2f}"
        )


class _Tee:
    """Engine A, with engine B fed the same inputs; compares their logits at every step."""

    def __init__(self, a, b, stats: Agreement, k: int, tau: float):
        self.a, self.b, self.stats, self.k, self.tau = a, b, stats, k, tau

    def _compare(self, la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
        la, lb = la.float(), lb.float()[:, : la.shape[1]]
        s = self.stats
        s.forced_same += int((la.argmax(-1) == lb.argmax(-1)).sum())
        s.forced_total += la.shape[0]
        ga = topk_entropy(torch.softmax(la, -1).topk(self.k).values, self.k) > self.tau
        gb = topk_entropy(torch.softmax(lb, -1).topk(self.k).values, self.k) > self.tau
        s.gate_same += int((ga == gb).sum())
        s.max_logit_diff = max(s.max_logit_diff, float((la - lb).abs().max()))
        return la

    def add(self, prompts):
        return self._compare(self.a.add(prompts), self.b.add(prompts))

    def step(self, inputs):
        return self._compare(self.a.step(inputs), self.b.step(inputs))

    def select(self, keep):
        self.a.select(keep)
        self.b.select(keep)

    def reset(self):
        self.a.reset()
        self.b.reset()


def agreement(
    model_a,
    model_b,
    prompts: list[str],
    method: str = "selar",
    max_new_tokens: int = 64,
    batch_size: int = 8,
    **options,
) -> Agreement:
    """Agreement of `model_b`'s engine with `model_a`'s (the reference) on `method`, greedy."""

    opts = dict(options, temperature=0.0, max_new_tokens=max_new_tokens)
    stats = Agreement()
    enc = [format_prompt(model_a, p) for p in prompts]
    ra = generate(model_a, prompts, method, prompt_token_ids=enc, batch_size=batch_size, **opts)
    rb = generate(model_b, prompts, method, prompt_token_ids=enc, batch_size=batch_size, **opts)
    for x, y in zip(ra, rb):
        n = max(len(x.token_ids), len(y.token_ids))
        stats.free_total += n
        stats.free_same += sum(a == b for a, b in zip(x.token_ids, y.token_ids))

    cfg = make_config(method, **opts)
    k, tau = int(getattr(cfg.options, "k", 3)), float(getattr(cfg.options, "tau", 0.5))
    for i in range(0, len(enc), batch_size):
        session = new_session(model_a, cfg)
        session.engine = _Tee(session.engine, model_b.make_engine(), stats, k, tau)
        run_to_end(session, enc[i : i + batch_size], [0] * len(enc[i : i + batch_size]))
        session.engine.reset()
    return stats
