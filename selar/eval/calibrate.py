"""`tau=auto`: SeLaR's gate threshold calibrated per model and dataset without labels.

SeLaR's tau is dataset-specific (the paper tunes it per benchmark). Calibration decodes a few of
the run's prompts with SeLaR's gate closed (plain tokens: the method's trajectory before any soft
input), records the normalised top-k entropy H^ of every step where a soft input could go (inside
the soft scope, not a protected math symbol), and picks the tau above which `soft_target` of all
generated tokens would be soft (the paper observes 6-14% soft steps). No gold answer is read. The
chosen tau and the measured shares go to run.json and the report.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..errors import CapabilityError
from ..methods import make_config

AUTO = "auto"


class _Eligible:
    """Wraps SeLaR with its gate closed: feeds plain tokens and traces H^ at the steps where a soft
    input could go, -1 elsewhere."""

    def __init__(self, method):
        self.method, self.name, self.num_candidates = method, method.name, method.num_candidates
        self.needs_hidden = False

    def init_state(self, n, device):
        return self.method.init_state(n, device)

    def step(self, ctx, state):
        out = self.method.step(ctx, state)  # tau = 1: never soft; out.entropy is H^
        ok = ctx.in_scope.clone()
        if self.method.symbols is not None:
            ok &= ~self.method.symbols[ctx.sampled]
        return replace(out, entropy=torch.where(ok, out.entropy, torch.full_like(out.entropy, -1.0)))


def pick_tau(entropies: list[list[float]], soft_target: float) -> dict:
    """The tau that makes `soft_target` of all steps soft: of the eligible steps (H^ >= 0), the
    round(target * steps) with the highest H^ lie above it. Returns tau and the measured shares."""
    steps = sum(len(e) for e in entropies)
    eligible = sorted((h for e in entropies for h in e if h >= 0), reverse=True)
    want = round(soft_target * steps)
    if not eligible or want >= len(eligible):
        tau = 0.0
    elif want == 0:
        tau = 1.0
    else:
        tau = float(eligible[want])  # strictly above: at most `want` steps
    soft = sum(h > tau for h in eligible)
    return {
        "tau": tau,
        "soft_target": soft_target,
        "steps": steps,
        "eligible_share": len(eligible) / max(steps, 1),
        "soft_share": soft / max(steps, 1),
    }


def calibrate_tau(
    model, method: str, prompt_ids: list[list[int]], seeds: list[int], options: dict, batch_size: int
) -> dict:
    """Decode `prompt_ids` with `method` (SeLaR or a variant; `options`, tau ignored) gate closed;
    returns `pick_tau`'s result for options["soft_target"] and the number of prompts."""
    from ..decode import new_session, run_continuous

    if not model.capabilities.stepwise:
        raise CapabilityError(
            f"tau=auto calibrates in the step-wise decode loop, which the {model.engine} engine does not run; "
            "use the transformers or llamacpp engine, or give tau a number"
        )
    cfg = make_config(method, **{**options, "tau": 1.0})
    if not hasattr(cfg.options, "soft_target") or not getattr(cfg.options, "gate", True):
        raise CapabilityError(f"tau=auto calibrates SeLaR's gate, which {method!r} does not have")
    model.expect_work(len(prompt_ids) * cfg.sampling.max_new_tokens)
    session = new_session(model, cfg)
    session.method = _Eligible(session.method)
    trace = {row.id: row.entropy for row in run_continuous(session, prompt_ids, seeds, batch_size)}
    res = pick_tau([trace[i] for i in range(len(prompt_ids))], cfg.options.soft_target)
    res["prompts"] = len(prompt_ids)
    return res
