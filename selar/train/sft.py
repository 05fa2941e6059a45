"""Supervised fine-tuning of a `LatentReasoner`: a Coconut curriculum, a latent budget with slack,
and CODI-style self-distillation.

Stage 0 is plain chain of thought:  question <bot> <eot> step1 step2 ... The answer is: 9 <eos>.
Stage s replaces the first s reasoning steps by s x `latents_per_step` latent steps:
question <bot> <lat> ... <lat> <eot> step(s+1) ... The answer is: 9 <eos>.
(`curriculum="none"` skips these intermediate stages.)
With `budget_base` set, a last stage gives every problem a latent *budget* above its need:
`budget_base + budget_per_step x k` latent steps for k reasoning steps, capped at the model's
`max_latent` (the paper's "5 + 1 per reasoning step", or a fixed 6 with `budget_per_step=0`), and
trains the stop head to stop there: the SFT model over-thinks, and RL can remove the slack.
Without a budget the stop head learns to stop at k x c (Coconut: exactly the need).

The LM loss is on the text after <eot>; the stop head is supervised (CONTINUE at <bot> and at
every <lat> but the last, STOP at the last) on rows whose whole CoT is latent (at the budget stage
when there is one). Gradients flow through the whole latent chain, as in Coconut.

`distill="codi"` (CODI, as the paper's SFT): the same model also reads the problem with its
chain of thought (the teacher, trained by its own LM loss), and the student's hidden states at the
position that predicts the answer (after "The answer is:") are pulled to the teacher's at its
answer position, in every layer: smooth L1 per layer divided by the standard deviation of the
teacher's states in that layer, averaged over layers, times `distill_weight` (teacher detached).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from ..errors import ConfigError
from .data import ANSWER_PREFIX, Example
from .model import CONTINUE, STOP, LatentReasoner

DISTILL = ("none", "codi")
CURRICULA = ("coconut", "none")
BUDGET_LENGTHS = ("budget", "need-to-budget")


@dataclass
class Item:
    """One training sequence: prompt <bot> <lat>*latent <eot> suffix."""

    prompt: list[int]
    latent: int
    suffix: list[int]  # token ids after <eot> (eos included)
    supervise_stop: bool = True
    last_decision_is_action: bool = True  # False when the latent limit forced the stop
    answer_at: int = -1  # index in `suffix` of the answer's first token (-1: unknown)
    thoughts: list[int] = field(default_factory=list)  # token j: what latent thought j+1 should decode to


def prompt_ids(tokenizer, question: str) -> list[int]:
    """The prompt as selar's core path encodes a raw prompt."""
    return tokenizer.encode(question, add_special_tokens=True)


def suffix_and_answer(tokenizer, steps: Sequence[str], answer: str) -> tuple[list[int], int]:
    """Token ids of 'step ... The answer is: 9' + eos, and the index of the answer's first token
    (where the encodings with and without the answer first differ)."""
    head = " ".join(list(steps) + [ANSWER_PREFIX])
    full = tokenizer.encode(f"{head} {answer}", add_special_tokens=False)
    pre = tokenizer.encode(head, add_special_tokens=False)
    at = 0
    while at < min(len(full), len(pre)) and full[at] == pre[at]:
        at += 1
    return full + [tokenizer.eos_token_id], at


def suffix_ids(tokenizer, steps: Sequence[str], answer: str) -> list[int]:
    return suffix_and_answer(tokenizer, steps, answer)[0]


def latent_budget(n_steps: int, base: int, per_step: int = 0, max_latent: Optional[int] = None) -> int:
    """The latent budget of a problem with `n_steps` reasoning steps: base + per_step x steps, capped."""
    n = base + per_step * n_steps
    return n if max_latent is None else min(n, max_latent)


def step_result_ids(tokenizer, steps: Sequence[str]) -> list[int]:
    """The first token of each step's result (the text after its last '=', else the whole step)."""
    return [tokenizer.encode(" " + s.rsplit("=", 1)[-1].strip(), add_special_tokens=False)[0] for s in steps]


def _thoughts(tokenizer, ex: Example, k: int, c: int, latent: int, hold: bool = False) -> list[int]:
    """Thought targets of the first k steps: the last of each step's c latent thoughts decodes to its
    result; with `hold`, every thought after the last step holds the final result (a step with
    nothing left to do leaves the state as it is)."""
    res = step_result_ids(tokenizer, ex.steps[:k])
    out = [-100] * min(latent, k * c)
    for j, t in enumerate(res):
        if (j + 1) * c <= len(out):
            out[(j + 1) * c - 1] = t
    if hold and res:
        out += [res[-1]] * (latent - len(out))
    return out


def stage_item(
    tokenizer,
    ex: Example,
    stage: int,
    latents_per_step: int = 1,
    *,
    supervise_stop: bool = True,
    thoughts: bool = False,
) -> Item:
    """Curriculum stage `stage`: the first `stage` reasoning steps of `ex` latent (c each), the rest as
    text; the stop head is supervised (to stop at k x c) once the whole CoT is latent, if `supervise_stop`.
    `thoughts`: targets for the latent thoughts (see `sft_loss`)."""
    k = min(stage, len(ex.steps))
    suffix, at = suffix_and_answer(tokenizer, ex.steps[k:], ex.answer)
    n = k * latents_per_step
    return Item(
        prompt_ids(tokenizer, ex.question),
        n,
        suffix,
        supervise_stop=supervise_stop and stage >= len(ex.steps),
        answer_at=at,
        thoughts=_thoughts(tokenizer, ex, k, latents_per_step, n) if thoughts else [],
    )


def budget_item(tokenizer, ex: Example, budget: int, *, thoughts: bool = False, latent: Optional[int] = None) -> Item:
    """The whole CoT of `ex` latent with `budget` latent steps; the stop head learns to stop there.
    `thoughts`: thought j decodes to step j's result, and every thought after the last step to the
    final result (the slack holds the answer). `latent` < budget: a row cut after that many latent
    steps, its answer trained there and its decisions all CONTINUE (the stop head still learns to
    stop at the budget; the answer learns to be readable anywhere from the need to the budget)."""
    n = budget if latent is None else latent
    suffix, at = suffix_and_answer(tokenizer, [], ex.answer)
    th = _thoughts(tokenizer, ex, len(ex.steps), 1, n, hold=True) if thoughts else []
    return Item(
        prompt_ids(tokenizer, ex.question),
        n,
        suffix,
        supervise_stop=True,
        answer_at=at,
        thoughts=th,
        last_decision_is_action=n >= budget,
    )


def build_batch(model: LatentReasoner, items: Sequence[Item]) -> dict[str, Tensor]:
    """Prefixes (prompt <bot> <lat>*k) left-padded to one width, suffixes (<eot> ...) right-padded.
    `lm_labels[b, t]`: the token position t must predict (-100: none); `stop_labels[b, t]`: the
    CONTINUE/STOP target of the decision at position t (-100: none); `answer_pos[b]`: the position
    that predicts the answer's first token (-1: unknown)."""
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
    answer_pos = torch.full((B,), -1, dtype=torch.long)
    thought_labels = torch.full((B, T), -100, dtype=torch.long)
    for b, (it, p, s) in enumerate(zip(items, pre, suf)):
        start = P - len(p)
        ids[b, start:P] = torch.tensor(p)
        ids[b, P : P + len(s)] = torch.tensor(s)
        mask[b, start : P + len(s)] = 1
        latent[b, P - it.latent : P] = True
        # position t predicts token t+1: the suffix after <eot>
        lm_labels[b, P : P + len(s) - 1] = torch.tensor(s[1:])
        if it.supervise_stop:  # decisions at <bot> (P-1-k) ... last <lat> (P-1)
            stop_labels[b, P - 1 - it.latent : P - 1] = CONTINUE
            if it.last_decision_is_action:
                stop_labels[b, P - 1] = STOP
        if it.answer_at >= 0:  # suffix token j sits at P+1+j and is predicted at P+j
            answer_pos[b] = P + it.answer_at
        if it.thoughts:  # thought j (fed to latent position j+1) is the last hidden state at P-1-latent+j
            a = P - 1 - it.latent
            thought_labels[b, a : a + len(it.thoughts)] = torch.tensor(it.thoughts)
    dev = model.device
    return {
        "input_ids": ids.to(dev),
        "attention_mask": mask.to(dev),
        "latent_mask": latent.to(dev),
        "lm_labels": lm_labels.to(dev),
        "stop_labels": stop_labels.to(dev),
        "answer_pos": answer_pos.to(dev),
        "thought_labels": thought_labels.to(dev),
    }


def codi_loss(student: Tensor, teacher: Tensor, eps: float = 1e-8) -> Tensor:
    """CODI's distillation loss between (B, L, D) hidden states (B rows, L layers): per layer l,
    smooth L1 (beta 1) averaged over rows and features, divided by std(teacher[:, l]) over rows and
    features (+eps); then the mean over layers. The teacher is detached."""
    teacher = teacher.detach()
    per_layer = torch.nn.functional.smooth_l1_loss(student.float(), teacher.float(), reduction="none").mean((0, 2))
    return (per_layer / (teacher.float().std(dim=(0, 2)) + eps)).mean()


def _at(hidden: Tensor, pos: Tensor) -> Tensor:
    """hidden (B, T, L, D) at one position per row -> (B, L, D)."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), pos]


def lm_ce(logits: Tensor, labels: Tensor) -> Tensor:
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


def sft_loss(
    model: LatentReasoner,
    batch: dict[str, Tensor],
    stop_weight: float = 1.0,
    teacher: Optional[dict[str, Tensor]] = None,
    distill_weight: float = 1.0,
    thought_weight: float = 0.0,
) -> tuple[Tensor, dict]:
    """LM loss after <eot> + stop_weight x stop-head loss; with a `teacher` batch (the same problems
    with their CoT), + the teacher's LM loss + distill_weight x `codi_loss` at the answer positions
    (rows whose answer position is unknown in either batch are left out of it); with thought_weight,
    + that x the LM loss of the latent thoughts against `thought_labels` (the LM head reads each fed
    back hidden state as if it predicted the next token: a thought should decode to its step's result)."""
    codi = teacher is not None
    logits, hidden = model.forward_latent(
        batch["input_ids"], batch["attention_mask"], batch["latent_mask"], all_layers=codi
    )
    last = hidden[:, :, -1] if codi else hidden
    lm = lm_ce(logits, batch["lm_labels"])
    sl = batch["stop_labels"]
    if bool((sl != -100).any()):
        sel = sl != -100
        stop = torch.nn.functional.cross_entropy(model.heads.stop_logits(last[sel]), sl[sel])
    else:
        stop = logits.new_zeros(())
    loss = lm + stop_weight * stop
    parts = {"lm": lm.item(), "stop": stop.item()}
    if thought_weight and bool((batch["thought_labels"] != -100).any()):
        th = lm_ce(logits, batch["thought_labels"])
        loss = loss + thought_weight * th
        parts["thought"] = th.item()
    if teacher is not None:
        t_logits, t_hidden = model.forward_latent(
            teacher["input_ids"], teacher["attention_mask"], teacher["latent_mask"], all_layers=True
        )
        t_lm = lm_ce(t_logits, teacher["lm_labels"])
        ok = (batch["answer_pos"] >= 0) & (teacher["answer_pos"] >= 0)
        d = (
            codi_loss(
                _at(hidden, batch["answer_pos"].clamp_min(0))[ok], _at(t_hidden, teacher["answer_pos"].clamp_min(0))[ok]
            )
            if int(ok.sum()) > 1
            else logits.new_zeros(())
        )
        loss = loss + t_lm + distill_weight * d
        parts.update(teacher_lm=t_lm.item(), distill=d.item())
    return loss, parts


@dataclass
class SFTConfig:
    stages: Optional[int] = None  # latent stages after the CoT stage (default: the most steps in the data)
    cot_steps: int = 300  # optimizer steps of stage 0 (plain CoT)
    steps_per_stage: int = 200  # optimizer steps of every latent stage
    latents_per_step: int = 1  # c: latent steps replacing one reasoning step
    budget_base: Optional[int] = None  # a last stage at a latent budget: base + per_step x steps (capped at
    budget_per_step: int = 0  # max_latent); None: none (the curriculum's steps x c, no slack)
    budget_steps: Optional[int] = None  # optimizer steps of the budget stage (default: steps_per_stage)
    budget_lengths: str = "budget"  # or "need-to-budget": answer rows cut anywhere from k x 1 to the budget
    curriculum: str = "coconut"  # or "none": no intermediate stages
    distill: str = "none"  # or "codi"
    distill_weight: float = 1.0
    thought_weight: float = 0.0  # latent thought j decodes to step j's result (0: no such loss)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 50
    max_grad_norm: float = 1.0
    stop_weight: float = 1.0
    seed: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.distill not in DISTILL:
            raise ConfigError(f"distill must be one of {', '.join(DISTILL)}, got {self.distill!r}")
        if self.budget_lengths not in BUDGET_LENGTHS:
            raise ConfigError(f"budget_lengths must be one of {', '.join(BUDGET_LENGTHS)}, got {self.budget_lengths!r}")
        if self.curriculum not in CURRICULA:
            raise ConfigError(f"curriculum must be one of {', '.join(CURRICULA)}, got {self.curriculum!r}")
        if self.budget_base is not None and (self.budget_base < 0 or self.budget_per_step < 0):
            raise ConfigError(
                f"the latent budget needs base >= 0 and per step >= 0, got {self.budget_base}, {self.budget_per_step}"
            )
        if self.latents_per_step < 1:
            raise ConfigError(f"latents_per_step must be at least 1, got {self.latents_per_step}")


def trainable_parameters(model: LatentReasoner) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def _stage_plan(cfg: SFTConfig, model: LatentReasoner, examples: Sequence[Example]) -> list[tuple[str, int, list]]:
    """(stage name, optimizer steps, items) in order."""
    tok = model.tokenizer
    stages = cfg.stages if cfg.stages is not None else max(len(e.steps) for e in examples)
    slack = cfg.budget_base is not None
    th = cfg.thought_weight > 0
    plan = [("0", cfg.cot_steps, [stage_item(tok, e, 0, supervise_stop=not slack) for e in examples])]
    if cfg.curriculum == "coconut":
        plan += [
            (
                str(s),
                cfg.steps_per_stage,
                [stage_item(tok, e, s, cfg.latents_per_step, supervise_stop=not slack, thoughts=th) for e in examples],
            )
            for s in range(1, stages + 1)
        ]
    elif not slack:
        plan.append(
            (
                str(stages),
                stages * cfg.steps_per_stage,
                [stage_item(tok, e, len(e.steps), cfg.latents_per_step, thoughts=th) for e in examples],
            )
        )
    base = cfg.budget_base
    if base is not None:
        n = cfg.budget_steps if cfg.budget_steps is not None else cfg.steps_per_stage
        rng = random.Random(cfg.seed)
        items = []
        for e in examples:
            b = latent_budget(len(e.steps), base, cfg.budget_per_step, model.heads.max_latent)
            cut = rng.randint(min(len(e.steps), b), b) if cfg.budget_lengths == "need-to-budget" else b
            items.append(budget_item(tok, e, b, thoughts=th, latent=cut))
        plan.append(("budget", n, items))
    return plan


def train_sft(
    model: LatentReasoner,
    examples: Sequence[Example],
    cfg: SFTConfig,
    log: Callable[[str], None] = print,
    tick: Optional[Callable[[str, int, int, str], None]] = None,
) -> list[dict]:
    """Run the curriculum; returns the logged history. `tick(phase, step, total, info)` is called
    after every optimizer step (a progress bar)."""
    plan = _stage_plan(cfg, model, examples)
    total = sum(n for _, n, _ in plan)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    params = trainable_parameters(model)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)))
    teachers = [stage_item(model.tokenizer, e, 0) for e in examples] if cfg.distill == "codi" else None
    history, step, t0 = [], 0, time.perf_counter()
    model.train()
    for stage, n_steps, items in plan:
        run: dict[str, float] = {}
        n = 0
        for i in range(n_steps):
            idx = rng.sample(range(len(items)), min(cfg.batch_size, len(items)))
            batch = build_batch(model, [items[j] for j in idx])
            teacher = build_batch(model, [teachers[j] for j in idx]) if teachers and stage != "0" else None
            loss, parts = sft_loss(model, batch, cfg.stop_weight, teacher, cfg.distill_weight, cfg.thought_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            step += 1
            n += 1
            for k, v in parts.items():
                run[k] = run.get(k, 0.0) + v
            if tick is not None:
                tick("sft", step, total, f"stage {stage} " + " ".join(f"{k} {v / n:.3f}" for k, v in run.items()))
            if n == cfg.log_every or i == n_steps - 1:
                rec = {
                    "stage": stage,
                    "step": step,
                    **{f"{k}_loss": v / n for k, v in run.items()},
                    "seconds": round(time.perf_counter() - t0, 1),
                }
                history.append(rec)
                losses = " ".join(f"{k} {v / n:.4f}" for k, v in run.items())
                log(f"sft stage {stage} ({len(plan) - 1} after CoT) step {step}: {losses} ({rec['seconds']} s)")
                run, n = {}, 0
    model.eval()
    return history
