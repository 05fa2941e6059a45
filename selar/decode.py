"""The decode loop. It knows nothing of any method: each step it builds p_t, draws a token,
asks the method for the emitted tokens and next inputs, records them, and drops finished rows
from the batch and the cache (only on steps where some row finished)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from . import sampling
from .config import SamplingConfig
from .methods.base import Method, StepContext

FINISH_REASONS = ("stop", "length", "stop_string", "method")


@dataclass
class RowOutput:
    token_ids: list[int]
    finish_reason: str
    soft: Optional[list[bool]] = None
    entropy: Optional[list[float]] = None


@torch.no_grad()
def decode(engine, prompts: Sequence[Sequence[int]], method: Method, cfg: SamplingConfig, *,
           seeds: Sequence[int], stop_ids: Sequence[int], think_end: Optional[int],
           reasoning_scope: bool, max_positions: Optional[int] = None,
           stop_check: Optional[Callable[[int, list[int]], bool]] = None,
           on_step: Optional[Callable[[Tensor, Tensor, Tensor], None]] = None) -> list[RowOutput]:
    """Decode a batch. `reasoning_scope`: soft inputs only until the row emits `think_end`.
    `stop_check(row, tokens)` (optional, per row) implements user stop strings.
    `on_step(rows, tokens, soft)` is called every step with the original row indices."""
    b0, t_max = len(prompts), cfg.max_new_tokens
    logits = engine.prefill([list(p) for p in prompts])
    device = logits.device
    active = torch.arange(b0, device=device)
    out_tok = torch.full((b0, t_max), -1, dtype=torch.long, device=device)
    out_soft = torch.zeros((b0, t_max), dtype=torch.bool, device=device)
    out_ent = torch.zeros((b0, t_max), dtype=torch.float32, device=device)
    lengths = torch.full((b0,), t_max, dtype=torch.long, device=device)
    reasons = torch.full((b0,), 1, dtype=torch.long, device=device)  # "length" unless told
    seeds_t = torch.tensor(list(seeds), dtype=torch.long, device=device)
    stop_t = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    reasoning = torch.ones(b0, dtype=torch.bool, device=device)
    # rows stop when their position reaches the model's context
    room = None
    if max_positions is not None:
        room = torch.tensor([max_positions - len(p) for p in prompts], device=device)
    method.start(b0, device)
    need = method.num_candidates

    for t in range(t_max):
        ids, probs = sampling.candidates(logits, cfg, need)
        if cfg.greedy:
            drawn = logits.argmax(-1)
        else:
            drawn = sampling.sample(ids, probs, seeds_t, t)
        ctx = StepContext(logits=logits, cand_ids=ids, cand_probs=probs, sampled=drawn,
                          reasoning=reasoning, step=t,
                          temperature=cfg.temperature if cfg.temperature > 0 else 1.0,
                          max_new_tokens=t_max)
        res = method.step(ctx)
        tok = res.tokens
        out_tok[active, t] = tok
        out_soft[active, t] = res.soft
        if res.entropy is not None:
            out_ent[active, t] = res.entropy.float()
        if on_step is not None:
            on_step(active, tok, res.soft)
        if reasoning_scope and think_end is not None:
            reasoning = reasoning & (tok != think_end)

        code = torch.full_like(tok, -1)
        if res.stop is not None:
            code = torch.where(res.stop, 3, code)
        if stop_check is not None:
            rows = active.tolist()
            hit = [stop_check(r, out_tok[r, : t + 1].tolist()) for r in rows]
            code = torch.where(torch.tensor(hit, device=device), 2, code)
        code = torch.where(torch.isin(tok, stop_t), 0, code)
        if room is not None:
            code = torch.where((room[active] <= t + 1) & (code < 0), 1, code)
        done = code >= 0
        if t + 1 == t_max or not bool(done.any()):
            if t + 1 == t_max:
                reasons[active] = torch.where(done, code, 1)
                break
            logits = engine.step(res.inputs)
            continue
        fin = active[done]
        lengths[fin] = t + 1
        reasons[fin] = code[done]
        keep = (~done).nonzero()[:, 0]
        if keep.numel() == 0:
            break
        active, reasoning, seeds_t = active[keep], reasoning[keep], seeds_t[keep]
        method.select(keep)
        engine.select(keep)
        logits = engine.step(res.inputs.select(keep))

    lengths_l, reasons_l = lengths.tolist(), reasons.tolist()
    toks, softs, ents = out_tok.tolist(), out_soft.tolist(), out_ent.tolist()
    return [RowOutput(token_ids=toks[i][: lengths_l[i]], finish_reason=FINISH_REASONS[reasons_l[i]],
                      soft=softs[i][: lengths_l[i]], entropy=ents[i][: lengths_l[i]])
            for i in range(b0)]
