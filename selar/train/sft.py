"""Supervised fine-tuning (Coconut-style curriculum) of a `LatentReasoner`.

Stage 0 is plain chain of thought:  question <bot> <eot> step1 step2 ... The answer is: 9 <eos>.
Stage s replaces the first s reasoning steps by s x `latents_per_step` latent steps:
question <bot> <lat> ... <lat> <eot> step(s+1) ... The answer is: 9 <eos>.
The LM loss is on the text after <eot>; the stop head is supervised (CONTINUE at <bot> and at
every <lat> but the last, STOP at the last) on rows whose whole CoT is latent, since only there
is the number of latent steps the one the model should learn (in earlier stages it is an
artefact of the curriculum). Gradients flow through the whole latent chain, as in Coconut.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from .data import ANSWER_PREFIX, Example
from .model import CONTINUE, STOP, LatentReasoner


@dataclass
class Item:
    """One training sequence: prompt <bot> <lat>*latent <eot> suffix."""

    prompt: list[int]
    latent: int
    suffix: list[int]               # token ids after <eot> (eos included)
    supervise_stop: bool = True
    last_decision_is_action: bool = True  # False when the latent limit forced the stop


def prompt_ids(tokenizer, question: str) -> list[int]:
    """The prompt as selar's core path encodes a raw prompt."""
    return tokenizer.encode(question, add_special_tokens=True)


def suffix_ids(tokenizer, steps: Sequence[str], answer: str) -> list[int]:
    text = " ".join(list(steps) + [f"{ANSWER_PREFIX} {answer}"])
    return tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]


def stage_item(tokenizer, ex: Example, stage: int, latents_per_step: int = 1) -> Item:
    k = min(stage, len(ex.steps))
    return Item(prompt_ids(tokenizer, ex.question), k * latents_per_step, suffix_ids(tokenizer, ex.steps[k:], ex.answer),
                supervise_stop=stage >= len(ex.steps))


def build_batch(model: LatentReasoner, items: Sequence[Item]) -> dict[str, Tensor]:
    """Prefixes (prompt <bot> <lat>*k) left-padded to one width, suffixes (<eot> ...) right-padded.
    `lm_labels[b, t]`: the token position t must predict (-100: none); `stop_labels[b, t]`: the
    CONTINUE/STOP target of the decision at position t (-100: none)."""
    h = model.heads
    pads = model.pad_id
    pre = [list(it.prompt) + [h.bot_id] + [h.lat_id] * it.latent for it in items]
    suf = [[h.eot_id] + list(it.suffix) for it in items]
    P, S = max(map(len, pre)), max(map(len, suf))
    B, T = len(items), P + S
    ids = torch.full((B, T), pads, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    latent = torch.zeros((B, T), dtype=torch.bool)
    lm_labels = torch.full((B, T), -100, dtype=torch.long)
    stop_labels = torch.full((B, T), -100, dtype=torch.long)
    for b, (it, p, s) in enumerate(zip(items, pre, suf)):
        start = P - len(p)
        ids[b, start:P] = torch.tensor(p)
        ids[b, P:P + len(s)] = torch.tensor(s)
        mask[b, start:P + len(s)] = 1
        latent[b, P - it.latent:P] = True
        # position t predicts token t+1: the suffix after <eot>
        lm_labels[b, P:P + len(s) - 1] = torch.tensor(s[1:])
        if it.supervise_stop:  # decisions at <bot> (P-1-k) ... last <lat> (P-1)
            stop_labels[b, P - 1 - it.latent:P - 1] = CONTINUE
            if it.last_decision_is_action:
                stop_labels[b, P - 1] = STOP
    dev = model.device
    return {"input_ids": ids.to(dev), "attention_mask": mask.to(dev), "latent_mask": latent.to(dev),
            "lm_labels": lm_labels.to(dev), "stop_labels": stop_labels.to(dev)}


def sft_loss(model: LatentReasoner, batch: dict[str, Tensor], stop_weight: float = 1.0) -> tuple[Tensor, dict]:
    logits, hidden = model.forward_latent(batch["input_ids"], batch["attention_mask"], batch["latent_mask"])
    lab = batch["lm_labels"]
    lm = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), lab.flatten(), ignore_index=-100)
    sl = batch["stop_labels"]
    if bool((sl != -100).any()):
        sel = sl != -100
        stop = torch.nn.functional.cross_entropy(model.heads.stop_logits(hidden[sel]), sl[sel])
    else:
        stop = logits.new_zeros(())
    return lm + stop_weight * stop, {"lm": lm.item(), "stop": stop.item()}


@dataclass
class SFTConfig:
    stages: Optional[int] = None       # latent stages after the CoT stage (default: the most steps in the data)
    cot_steps: int = 300               # optimizer steps of stage 0 (plain CoT)
    steps_per_stage: int = 200         # optimizer steps of every latent stage
    latents_per_step: int = 1          # c: latent steps replacing one reasoning step
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 50
    max_grad_norm: float = 1.0
    stop_weight: float = 1.0
    seed: int = 0
    log_every: int = 50


def trainable_parameters(model: LatentReasoner) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def train_sft(model: LatentReasoner, examples: Sequence[Example], cfg: SFTConfig,
              log: Callable[[str], None] = print) -> list[dict]:
    """Run the curriculum; returns the logged history."""
    stages = cfg.stages if cfg.stages is not None else max(len(e.steps) for e in examples)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    params = trainable_parameters(model)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)))
    tok = model.tokenizer
    history, step, t0 = [], 0, time.perf_counter()
    model.train()
    for stage in range(stages + 1):
        n_steps = cfg.cot_steps if stage == 0 else cfg.steps_per_stage
        items = [stage_item(tok, e, stage, cfg.latents_per_step) for e in examples]
        run = {"lm": 0.0, "stop": 0.0, "n": 0}
        for i in range(n_steps):
            batch = build_batch(model, rng.sample(items, min(cfg.batch_size, len(items))))
            loss, parts = sft_loss(model, batch, cfg.stop_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            step += 1
            run["lm"] += parts["lm"]
            run["stop"] += parts["stop"]
            run["n"] += 1
            if run["n"] == cfg.log_every or i == n_steps - 1:
                rec = {"stage": stage, "step": step, "lm_loss": run["lm"] / run["n"],
                       "stop_loss": run["stop"] / run["n"], "seconds": round(time.perf_counter() - t0, 1)}
                history.append(rec)
                log(f"sft stage {stage}/{stages} step {step}: lm {rec['lm_loss']:.4f} stop {rec['stop_loss']:.4f} "
                    f"({rec['seconds']} s)")
                run = {"lm": 0.0, "stop": 0.0, "n": 0}
    model.eval()
    return history
