"""Adaptive-length latent reasoning (seed 003, "Learning When to Stop") at inference, for models
trained by `selar train` (load the adapter directory with `selar.load_model(DIR)`).

Step 0 emits <bot>. Then, at every step, the model's CONTINUE/STOP head reads the last hidden
state: CONTINUE emits the placeholder <lat> and feeds the hidden state itself back as the next
input (the third input kind, `Mixture.latent`; soft=True, so `num_soft_steps` is the number of
latent steps); STOP (or `max_latent_steps`) emits <eot> and the answer is decoded as text with
the sampling settings. The stop decision is greedy: STOP when p(STOP) >= stop_threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config import check_range
from ..errors import ConfigError
from .base import Mixture, State, StepContext, StepOutput, VocabInfo


@dataclass
class AdaptiveLatentOptions:
    max_latent_steps: Optional[int] = None  # default: the model's (set at training)
    stop_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.max_latent_steps is not None:
            check_range("max_latent_steps", self.max_latent_steps, 0, kind=int)
        check_range("stop_threshold", self.stop_threshold, 0.0, 1.0)


class AdaptiveLatent:
    name = "adaptive-latent"
    num_candidates = 1
    needs_hidden = True

    def __init__(self, opts: AdaptiveLatentOptions, vocab: VocabInfo):
        heads = vocab.latent
        if heads is None:
            raise ConfigError(
                "method 'adaptive-latent' needs a model trained with `selar train` "
                "(load its adapter directory: selar.load_model(DIR) or --model DIR)"
            )
        self.heads, self.opts = heads, opts
        self.max_latent = heads.max_latent if opts.max_latent_steps is None else opts.max_latent_steps

    def init_state(self, n: int, device: torch.device) -> State:
        return {
            "phase": torch.zeros(n, dtype=torch.long, device=device),  # 0 before <bot>, 1 latent, 2 answer
            "latent": torch.zeros(n, dtype=torch.long, device=device),
        }  # latent steps taken

    def step(self, ctx: StepContext, state: State) -> StepOutput:
        h = self.heads
        phase, count = state["phase"], state["latent"]
        p_stop = h.stop_prob(ctx.hidden)
        stop = (p_stop >= self.opts.stop_threshold) | (count >= self.max_latent)
        go_on = (phase == 1) & ~stop
        tokens = torch.where(
            phase == 0, h.bot_id, torch.where(phase == 1, torch.where(go_on, h.lat_id, h.eot_id), ctx.sampled)
        )
        inputs = Mixture.of_tokens(tokens)
        inputs.latent = go_on
        new_phase = torch.where(phase == 0, 1, torch.where((phase == 1) & stop, 2, phase))
        return StepOutput(
            tokens=tokens, inputs=inputs, soft=go_on, state={"phase": new_phase, "latent": count + go_on.long()}
        )
