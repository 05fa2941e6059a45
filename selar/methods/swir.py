"""SwiR / SwiReasoning (Shi et al. 2025): switch between latent and explicit thinking.

Per row: start latent with H_ref = H_0 (entropy of the full untempered distribution).
latent -> explicit as soon as H_t < H_ref; explicit -> latent when H_t > H_ref, at least
`window` steps after the last switch and still reasoning; each switch sets H_ref = H_t.
Latent input: softmax(z_t) @ E (dense). At a switch the input is blended with the marker
token: to explicit, a E(y_t) + (1 - a) E(</think>); to latent, b * soft + (1 - b) E(<think>),
with a = alpha0 + (1 - alpha0) t / T_max and b = beta0 + (1 - beta0) t / T_max.
Switch-count control C: after C switches inject </think>; after 2C inject </think> and
`answer_prefix`, and stop `answer_tokens` tokens later. Math-symbol tokens are explicit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config import check_range
from .base import Mixture, StepContext, StepOutput, VocabInfo, full_entropy


@dataclass
class SwiROptions:
    window: int = 512
    alpha0: float = 0.6
    beta0: float = 0.7
    max_switch_count: Optional[int] = None  # C; None disables switch-count control
    answer_prefix: str = " The final answer is"
    answer_tokens: int = 32
    protect_symbols: bool = True

    def __post_init__(self) -> None:
        check_range("window", self.window, 0, kind=int)
        check_range("alpha0", self.alpha0, 0.0, 1.0)
        check_range("beta0", self.beta0, 0.0, 1.0)
        if self.max_switch_count is not None:
            check_range("max_switch_count", self.max_switch_count, 1, kind=int)
        check_range("answer_tokens", self.answer_tokens, 1, kind=int)


class SwiR:
    name = "swir"
    num_candidates = 3

    def __init__(self, options: SwiROptions, vocab: VocabInfo):
        self.o = options
        self.vocab = vocab
        self.symbols = None
        if options.protect_symbols:
            from ..symbols import symbol_mask
            self.symbols = vocab.symbol_mask if vocab.symbol_mask is not None else symbol_mask(vocab.tokenizer, vocab.size)
        end = [] if vocab.think_end is None else [vocab.think_end]
        self.close_seq = end
        self.answer_seq = end + (vocab.encode(options.answer_prefix) if options.answer_prefix else [])

    def start(self, batch_size: int, device: torch.device) -> None:
        z = lambda dt: torch.zeros(batch_size, dtype=dt, device=device)  # noqa: E731
        self.latent = z(torch.bool)
        self.h_ref = z(torch.float32)
        self.last_switch = z(torch.long)
        self.switches = z(torch.long)
        self.deadline = torch.full((batch_size,), -1, dtype=torch.long, device=device)
        q = max(len(self.answer_seq), 1)
        self.queue = torch.zeros(batch_size, q, dtype=torch.long, device=device)
        self.q_pos = z(torch.long)
        self.q_len = z(torch.long)
        if self.symbols is not None:
            self.symbols = self.symbols.to(device)

    def _inject(self, rows: torch.Tensor, seq: list[int]) -> None:
        if not seq:
            return
        seq_t = torch.tensor(seq, dtype=torch.long, device=rows.device)
        self.queue[rows, : len(seq)] = seq_t
        self.q_pos[rows] = 0
        self.q_len[rows] = len(seq)

    def step(self, ctx: StepContext) -> StepOutput:
        o, t, r = self.o, ctx.step, ctx.reasoning
        h = full_entropy(ctx.logits)
        if t == 0:
            self.h_ref = h.clone()
            self.latent = r.clone()
            to_exp = to_lat = torch.zeros_like(r)
        else:
            to_exp = self.latent & (h < self.h_ref)
            to_lat = ~self.latent & r & (h > self.h_ref) & (t - self.last_switch >= o.window)
            switch = to_exp | to_lat
            self.h_ref = torch.where(switch, h, self.h_ref)
            self.last_switch = torch.where(switch, torch.full_like(self.last_switch, t), self.last_switch)
            self.switches = self.switches + switch.long()
            self.latent = self.latent ^ switch
            if o.max_switch_count is not None:
                c = o.max_switch_count
                self._inject(switch & (self.switches == c), self.close_seq)
                at_2c = switch & (self.switches == 2 * c)
                self._inject(at_2c, self.answer_seq)
                self.deadline = torch.where(at_2c, t + len(self.answer_seq) + o.answer_tokens, self.deadline)
        self.latent = self.latent & r
        # tokens: injected ones first, else the sampled token
        forced = self.q_pos < self.q_len
        queued = self.queue.gather(1, self.q_pos.clamp(max=self.queue.shape[1] - 1)[:, None])[:, 0]
        tokens = torch.where(forced, queued, ctx.sampled)
        self.q_pos = self.q_pos + forced.long()

        latent_in = self.latent & ~forced
        if self.symbols is not None:
            latent_in = latent_in & ~self.symbols[tokens]
        if not bool((latent_in | to_exp | to_lat).any()):  # one sync per step: all rows explicit
            return StepOutput(tokens=tokens, inputs=Mixture.of_tokens(tokens), soft=latent_in, entropy=h,
                              stop=(self.deadline >= 0) & (t + 1 >= self.deadline))
        frac = min(t / max(ctx.max_new_tokens, 1), 1.0)
        a = o.alpha0 + (1 - o.alpha0) * frac
        b = o.beta0 + (1 - o.beta0) * frac
        w = torch.softmax(ctx.logits, dim=-1)
        w = torch.where(latent_in[:, None], w, torch.zeros_like(w))
        onehot_w = torch.where(latent_in, 0.0, 1.0)
        w.scatter_add_(1, tokens[:, None], onehot_w[:, None])
        v = self.vocab
        if v.think_end is not None:
            blend_e = to_exp & ~forced
            w = torch.where(blend_e[:, None], w * a, w)
            w[:, v.think_end] += torch.where(blend_e, 1 - a, 0.0)
        if v.think_start is not None:
            blend_l = to_lat & latent_in
            w = torch.where(blend_l[:, None], w * b, w)
            w[:, v.think_start] += torch.where(blend_l, 1 - b, 0.0)
        stop = (self.deadline >= 0) & (t + 1 >= self.deadline)
        return StepOutput(tokens=tokens, inputs=Mixture(None, w), soft=latent_in, entropy=h, stop=stop)

    def select(self, keep: torch.Tensor) -> None:
        for name in ("latent", "h_ref", "last_switch", "switches", "deadline", "queue", "q_pos", "q_len"):
            setattr(self, name, getattr(self, name)[keep])
