"""SwiR / SwiReasoning (Shi et al. 2025): switch between latent and explicit thinking.

Per row: start latent with H_ref = H_0 (entropy of the full untempered distribution).
latent -> explicit as soon as H_t < H_ref; explicit -> latent when H_t > H_ref, at least
`window` steps after the last switch and still reasoning; each switch sets H_ref = H_t.
Latent input: softmax(z_t) @ E (dense); the first one is 0.9 softmax(z_0) @ E + 0.1 E("\\n").
At a switch the latent input is blended with a marker token, as the reference code
(sdc17/SwiReasoning, generation_utils.py) does: to latent, a soft + (1 - a) E(<think>); to explicit,
b soft + (1 - b) E(</think>) (the soft input, not the emitted token's embedding), with
a = alpha0 + (1 - alpha0) t / T_max and b = beta0 + (1 - beta0) t / T_max. (The reference looks up
its line break as the token spelled backslash-n; this one is the line break its names say.)
Switch-count control C, as the reference code (sdc17/SwiReasoning) counts it: only latent ->
explicit switches count, and they go on counting after an injected </think> (a row whose model
writes </think> itself is locked explicit). From the step after the C-th to the 2C-th such
switch </think> is injected; after the (2C+1)-th, </think> and `answer_prefix`, and the row stops
`answer_tokens` steps after that switch (the prefix included). Math-symbol tokens are explicit.
Inputs after </think> are plain tokens (the scope rules, selar.scope: the reference would feed
latent inputs in the answer too); a blended switch input counts as soft.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config import check_range
from ..errors import ConfigError
from ..symbols import symbol_mask
from .base import Mixture, State, StepContext, StepOutput, VocabInfo, full_entropy


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
        if not isinstance(self.answer_prefix, str):
            raise ConfigError(f"answer_prefix must be a string, got {self.answer_prefix!r}")


class SwiR:
    name = "swir"
    num_candidates = 3

    def __init__(self, options: SwiROptions, vocab: VocabInfo):
        self.o = options
        self.vocab = vocab
        self.symbols = None
        if options.protect_symbols:
            self.symbols = (
                vocab.symbol_mask if vocab.symbol_mask is not None else symbol_mask(vocab.tokenizer, vocab.size)
            )
        end = [] if vocab.think_end is None else [vocab.think_end]
        self.close_seq = end
        self.answer_seq = end + (vocab.encode(options.answer_prefix) if options.answer_prefix else [])
        nl = vocab.encode("\n")
        self.line_break = nl[0] if len(nl) == 1 else None

    def init_state(self, n: int, device: torch.device) -> State:
        if self.symbols is not None:
            self.symbols = self.symbols.to(device)

        def z(dt: torch.dtype) -> torch.Tensor:
            return torch.zeros(n, dtype=dt, device=device)

        return {
            "latent": z(torch.bool),
            "h_ref": z(torch.float32),
            "last_switch": z(torch.long),
            "switches": z(torch.long),  # latent -> explicit switches
            "locked": z(torch.bool),
            "deadline": torch.full((n,), -1, dtype=torch.long, device=device),
            "queue": torch.zeros(n, max(len(self.answer_seq), 1), dtype=torch.long, device=device),
            "q_pos": z(torch.long),
            "q_len": z(torch.long),
        }

    @staticmethod
    def _inject(st: State, rows: torch.Tensor, seq: list[int]) -> None:
        """Queue `seq` as the next emitted tokens of `rows` (a (B,) bool mask)."""
        if not seq:
            return
        row = torch.zeros(st["queue"].shape[1], dtype=torch.long, device=rows.device)
        row[: len(seq)] = torch.tensor(seq, dtype=torch.long, device=rows.device)
        st["queue"] = torch.where(rows[:, None], row, st["queue"])
        st["q_pos"] = torch.where(rows, 0, st["q_pos"])
        st["q_len"] = torch.where(rows, len(seq), st["q_len"])

    def step(self, ctx: StepContext, state: State) -> StepOutput:
        o, t, v = self.o, ctx.step, self.vocab
        st = dict(state)
        h = full_entropy(ctx.logits)
        first = t == 0
        # emitted tokens: a queued injection first (queued at an earlier step), else the sampled token
        forced = st["q_pos"] < st["q_len"]
        queued = st["queue"].gather(1, st["q_pos"].clamp(max=st["queue"].shape[1] - 1)[:, None])[:, 0]
        tokens = torch.where(forced, queued, ctx.sampled)
        st["q_pos"] = st["q_pos"] + forced.long()
        # a row is locked explicit once its model writes </think> itself (an injected one does not
        # lock it), or when it starts outside its soft scope; the first step sets the reference
        locked = torch.where(first, ~ctx.in_scope, st["locked"])
        if v.think_end is not None:
            locked = locked | (ctx.sampled == v.think_end)
        to_exp = ~first & st["latent"] & (h < st["h_ref"])
        to_lat = ~first & ~st["latent"] & ~locked & (h > st["h_ref"]) & (t - st["last_switch"] >= o.window)
        switch = to_exp | to_lat
        st["locked"] = locked
        st["h_ref"] = torch.where(first | switch, h, st["h_ref"])
        st["last_switch"] = torch.where(switch, t, st["last_switch"])
        st["switches"] = st["switches"] + to_exp.long()
        st["latent"] = torch.where(first, ~locked, st["latent"] ^ switch)
        if o.max_switch_count is not None:  # as the reference: switches keep counting after </think>
            c, n = o.max_switch_count, st["switches"]
            self._inject(st, to_exp & (n >= c) & (n <= 2 * c), self.close_seq)
            final = to_exp & (n == 2 * c + 1)
            self._inject(st, final, self.answer_seq)
            st["deadline"] = torch.where(final, t + o.answer_tokens, st["deadline"])
        # only switch-count control ends rows (None: this method never does, as engines that cannot end one need)
        stop = (st["deadline"] >= 0) & (t + 1 >= st["deadline"]) if o.max_switch_count is not None else None

        latent_in = st["latent"] & ~forced & ctx.in_scope  # the mode goes on outside the scope; inputs do not
        if self.symbols is not None:
            latent_in = latent_in & ~self.symbols[tokens]
        if not bool((latent_in | ((to_exp | to_lat) & ctx.in_scope)).any()):  # one sync per step: all rows explicit
            return StepOutput(
                tokens=tokens, inputs=Mixture.of_tokens(tokens), soft=latent_in, entropy=h, stop=stop, state=st
            )
        frac = (t.float() / ctx.max_new_tokens.clamp_min(1).float()).clamp(max=1.0)
        a = o.alpha0 + (1 - o.alpha0) * frac
        b = o.beta0 + (1 - o.beta0) * frac
        # each row's input: coef * softmax(z) + (1 - coef) * E(marker) where it blends (coef 1: latent,
        # no blend), or E(token) where it is plain (coef 0)
        none = torch.zeros_like(latent_in)
        nl = first & latent_in if self.line_break is not None else none  # the first latent input
        lat = to_lat & latent_in if v.think_start is not None else none  # switching to latent
        exp = to_exp & ~forced & ctx.in_scope if v.think_end is not None else none  # to explicit, in place of E(y)
        coef = torch.where(latent_in, 1.0, 0.0)
        coef = torch.where(nl, 0.9, torch.where(lat, a, torch.where(exp, b, coef)))
        marker = torch.where(nl, self.line_break or 0, torch.where(lat, v.think_start or 0, v.think_end or 0))
        w = torch.softmax(ctx.logits, dim=-1) * coef[:, None]
        w.scatter_add_(1, marker[:, None], torch.where(nl | lat | exp, 1 - coef, 0.0)[:, None])
        w.scatter_add_(1, tokens[:, None], torch.where(latent_in | exp, 0.0, 1.0)[:, None])
        soft = latent_in | exp  # a blended switch input is soft, whatever b
        return StepOutput(tokens=tokens, inputs=Mixture(None, w), soft=soft, entropy=h, stop=stop, state=st)
