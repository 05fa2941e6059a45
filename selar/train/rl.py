"""GRPO for a `LatentReasoner`, with the relative length penalty of "Learning When to Stop".

For every prompt a group of G completions is sampled (stop decisions from the stop head, answer
tokens from the LM). Rewards (as in the authors' RelativeLengthRewarder):

    r_i = format_penalty * [malformed_i] + answer_reward * [correct_i] + rel_i

    rel_i = -length_penalty * (L_i - mean_C L) / (max_C L - min_C L)   for i in C (the correct ones)
          = 0  for wrong completions, or when max_C L = min_C L

where L_i is the number of latent steps. With `length_accuracy_requirement` a (a fraction of G
when <= 1, else a count) the penalty applies only when |C| >= a; below it the correct ones get
+length_reward_below * (L_i - mean)/(range) instead (longer reasoning encouraged while the
prompt is not yet solved), or 0 when that is None.

Advantages are group-normalised: A_i = (r_i - mean_g r) / (std_g r + eps), std with Bessel's
correction (as in trl's GRPOTrainer). The policy's actions are the CONTINUE/STOP decisions and
the answer tokens; the loss is GRPO's (one update per batch, so the ratio is 1 and the clipping
inactive): -mean_i (1/|o_i|) sum_t [A_i * ratio_t - beta * KL_t], KL_t the k3 estimator against
the frozen SFT model. trl's GRPOTrainer is not used: it samples text with `generate`, and a latent
rollout feeds hidden states, which it cannot express.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..errors import ConfigError
from .data import Example, is_correct, parse_answer
from .model import STOP, LatentReasoner
from .sft import Item, build_batch, prompt_ids


def relative_length_rewards(
    lengths: Sequence[float],
    correct: Sequence[bool],
    penalty: float,
    accuracy_requirement: Optional[float] = None,
    reward_below: Optional[float] = None,
) -> list[float]:
    """The relative length term of one group (see the module docstring)."""
    G = len(lengths)
    idx = [i for i in range(G) if correct[i]]
    out = [0.0] * G
    if not idx:
        return out
    coeff = -penalty
    if accuracy_requirement:
        need = accuracy_requirement * G if accuracy_requirement <= 1 else accuracy_requirement
        if len(idx) < need:
            if reward_below is None:
                return out
            coeff = reward_below
    ls = [float(lengths[i]) for i in idx]
    rng = max(ls) - min(ls)
    if rng == 0:
        return out
    mean = sum(ls) / len(ls)
    for i in idx:
        out[i] = coeff * (float(lengths[i]) - mean) / rng
    return out


def group_rewards(
    lengths,
    correct,
    well_formed,
    *,
    answer_reward: float = 1.0,
    format_penalty: float = -1.0,
    length_penalty: float = 0.0,
    accuracy_requirement: Optional[float] = None,
    reward_below: Optional[float] = None,
) -> list[float]:
    rel = relative_length_rewards(lengths, correct, length_penalty, accuracy_requirement, reward_below)
    return [
        (0.0 if f else format_penalty) + (answer_reward if c else 0.0) + r for c, f, r in zip(correct, well_formed, rel)
    ]


def grpo_advantages(rewards: Tensor, group_size: int, eps: float = 1e-4, scale: bool = True) -> Tensor:
    """(N*G,) rewards, groups contiguous -> (N*G,) advantages."""
    r = rewards.view(-1, group_size)
    a = r - r.mean(1, keepdim=True)
    if scale:
        a = a / (r.std(1, keepdim=True) + eps)
    return a.flatten()


def action_logprobs(
    model: LatentReasoner, batch: dict[str, Tensor], temperature: float = 1.0, stop_temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Per position log-probabilities of the actions taken (B, T) and their mask: stop decisions
    (at `stop_labels`) and answer tokens (at `lm_labels`)."""
    logits, hidden = model.forward_latent(batch["input_ids"], batch["attention_mask"], batch["latent_mask"])
    lab, sl = batch["lm_labels"], batch["stop_labels"]
    tok_lp = torch.log_softmax(logits.float() / temperature, -1).gather(-1, lab.clamp_min(0)[..., None])[..., 0]
    stop_lp = torch.log_softmax(model.heads.stop_logits(hidden) / stop_temperature, -1)
    stop_lp = stop_lp.gather(-1, sl.clamp_min(0)[..., None])[..., 0]
    lp = torch.where(lab != -100, tok_lp, torch.where(sl != -100, stop_lp, torch.zeros_like(tok_lp)))
    return lp, (lab != -100) | (sl != -100)


def grpo_loss(lp: Tensor, mask: Tensor, adv: Tensor, ref_lp: Optional[Tensor] = None, beta: float = 0.0) -> Tensor:
    ratio = torch.exp(lp - lp.detach())
    per = -ratio * adv[:, None]
    if ref_lp is not None and beta:
        d = ref_lp - lp
        per = per + beta * (torch.exp(d) - d - 1)
    m = mask.float()
    return ((per * m).sum(1) / m.sum(1).clamp_min(1)).mean()


def rollout_items(model: LatentReasoner, prompts: Sequence[list[int]], rows: Sequence[dict]) -> list[Item]:
    return [
        Item(p, r["latent_steps"], r["answer_ids"], supervise_stop=True, last_decision_is_action=not r["forced_stop"])
        for p, r in zip(prompts, rows)
    ]


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k / n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


@torch.no_grad()
def evaluate(
    model: LatentReasoner,
    examples: Sequence[Example],
    batch_size: int = 64,
    max_answer_tokens: int = 16,
    max_latent: Optional[int] = None,
) -> dict:
    """Greedy decoding: accuracy (and its 95% Wilson interval), mean latent steps (all / correct),
    share of well formed answers, and the same by number of reasoning steps (`by_ops`)."""
    model.eval()
    tok = model.tokenizer
    correct, steps, formed = [], [], []
    for b in range(0, len(examples), batch_size):
        chunk = examples[b : b + batch_size]
        rows = model.generate(
            [prompt_ids(tok, e.question) for e in chunk],
            greedy=True,
            max_answer_tokens=max_answer_tokens,
            max_latent=max_latent,
        )
        for e, r in zip(chunk, rows):
            pred = parse_answer(model.answer_text(r["answer_ids"]))
            formed.append(pred is not None)
            correct.append(is_correct(pred, e.answer))
            steps.append(r["latent_steps"])
    n = len(examples)
    cs = [s for s, c in zip(steps, correct) if c]
    lo, hi = wilson_interval(sum(correct), n)
    by_ops = {}
    for k in sorted({len(e.steps) for e in examples}):
        idx = [i for i, e in enumerate(examples) if len(e.steps) == k]
        by_ops[str(k)] = {
            "n": len(idx),
            "accuracy": sum(correct[i] for i in idx) / len(idx),
            "mean_latent_steps": sum(steps[i] for i in idx) / len(idx),
        }
    return {
        "n": n,
        "accuracy": sum(correct) / n,
        "accuracy_ci95": [lo, hi],
        "mean_latent_steps": sum(steps) / n,
        "mean_latent_steps_correct": (sum(cs) / len(cs)) if cs else float("nan"),
        "well_formed": sum(formed) / n,
        "by_ops": by_ops,
    }


@dataclass
class RLConfig:
    steps: int = 100
    prompts_per_step: int = 8
    group_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    beta: float = 0.0  # KL to the SFT model (the paper: 1e-3)
    temperature: float = 1.0  # of the answer tokens in rollouts
    stop_temperature: float = 1.0  # of the stop head in rollouts ...
    stop_temperature_end: Optional[float] = None  # ... annealed linearly to this by the last step (None: constant)
    max_answer_tokens: int = 16
    answer_reward: float = 1.0
    format_penalty: float = -1.0
    length_penalty: float = 0.1
    length_accuracy_requirement: Optional[float] = 1.0  # 1.0: only when the whole group is correct
    length_reward_below: Optional[float] = None
    eps: float = 1e-4
    max_grad_norm: float = 1.0
    seed: int = 0
    log_every: int = 10
    val_every: int = 0  # with validation problems: evaluate every this many steps and keep the best checkpoint:
    val_tolerance: float = 0.01  # the fewest latent steps at a validation accuracy within this of the start's

    def __post_init__(self) -> None:
        for name in ("steps", "prompts_per_step", "max_answer_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ConfigError(f"group_size must be at least 2 (GRPO compares a group), got {self.group_size}")
        for name in ("lr", "temperature", "stop_temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be above 0, got {getattr(self, name)}")
        if self.stop_temperature_end is not None and not self.stop_temperature_end > 0:
            raise ConfigError(f"stop_temperature_end must be above 0, got {self.stop_temperature_end}")
        if self.val_every < 0 or self.val_tolerance < 0:
            raise ConfigError(f"val_every and val_tolerance must be >= 0, got {self.val_every}, {self.val_tolerance}")


def train_rl(
    model: LatentReasoner,
    examples: Sequence[Example],
    cfg: RLConfig,
    log: Callable[[str], None] = print,
    tick: Optional[Callable[[str, int, int, str], None]] = None,
    val: Optional[Sequence[Example]] = None,
) -> list[dict]:
    """GRPO with the relative length penalty; returns the logged history. `tick(phase, step, total,
    info)` is called after every step (a progress bar).

    With `val` problems (never the held-out ones) and `cfg.val_every`, the model is evaluated
    greedily on them at the start and every `val_every` steps, and ends as the checkpoint with the
    fewest mean latent steps among those whose validation accuracy is within `cfg.val_tolerance`
    of the start's (the start itself if none is): model selection on a validation set, as RL runs
    keep their best checkpoint."""
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    tok = model.tokenizer
    ref = None
    if cfg.beta:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    history, t0 = [], time.perf_counter()
    acc = {"reward": 0.0, "correct": 0.0, "latent": 0.0, "n": 0}
    validate = bool(val) and cfg.val_every > 0
    if validate:
        assert val is not None
        start = evaluate(model, val, max_answer_tokens=cfg.max_answer_tokens)
        floor = start["accuracy"] - cfg.val_tolerance
        best = (0, start, copy.deepcopy(model.state_dict()))
        log(
            f"rl validation at the start: accuracy {start['accuracy']:.3f}, "
            f"latent steps {start['mean_latent_steps']:.2f}"
        )
    for step in range(1, cfg.steps + 1):
        st = cfg.stop_temperature
        if cfg.stop_temperature_end is not None:
            st += (cfg.stop_temperature_end - st) * (step - 1) / max(1, cfg.steps - 1)
        exs = rng.sample(list(examples), min(cfg.prompts_per_step, len(examples)))
        prompts = [prompt_ids(tok, e.question) for e in exs for _ in range(cfg.group_size)]
        golds = [e.answer for e in exs for _ in range(cfg.group_size)]
        model.eval()
        rows = model.generate(
            prompts,
            greedy=False,
            temperature=cfg.temperature,
            stop_temperature=st,
            max_answer_tokens=cfg.max_answer_tokens,
            generator=gen,
        )
        preds = [parse_answer(model.answer_text(r["answer_ids"])) for r in rows]
        ok = [is_correct(p, g) for p, g in zip(preds, golds)]
        formed = [p is not None for p in preds]
        lengths = [r["latent_steps"] for r in rows]
        rewards = []
        G = cfg.group_size
        for g in range(len(exs)):
            s = slice(g * G, (g + 1) * G)
            rewards += group_rewards(
                lengths[s],
                ok[s],
                formed[s],
                answer_reward=cfg.answer_reward,
                format_penalty=cfg.format_penalty,
                length_penalty=cfg.length_penalty,
                accuracy_requirement=cfg.length_accuracy_requirement,
                reward_below=cfg.length_reward_below,
            )
        adv = grpo_advantages(torch.tensor(rewards), G, cfg.eps).to(model.device)
        batch = build_batch(model, rollout_items(model, prompts, rows))
        model.train()
        lp, mask = action_logprobs(model, batch, cfg.temperature, st)
        ref_lp = None
        if ref is not None:
            with torch.no_grad():
                ref_lp, _ = action_logprobs(ref, batch, cfg.temperature, st)
        loss = grpo_loss(lp, mask, adv, ref_lp, cfg.beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        acc["reward"] += sum(rewards) / len(rewards)
        acc["correct"] += sum(ok) / len(ok)
        acc["latent"] += sum(lengths) / len(lengths)
        acc["n"] += 1
        if tick is not None:
            m = acc["n"]
            tick(
                "rl",
                step,
                cfg.steps,
                f"reward {acc['reward'] / m:.3f} sampled acc {acc['correct'] / m:.3f} latent {acc['latent'] / m:.2f}",
            )
        if acc["n"] == cfg.log_every or step == cfg.steps:
            n = acc["n"]
            rec = {
                "step": step,
                "reward": acc["reward"] / n,
                "sample_accuracy": acc["correct"] / n,
                "sample_latent_steps": acc["latent"] / n,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            history.append(rec)
            log(
                f"rl step {step}/{cfg.steps}: reward {rec['reward']:.3f} sampled acc {rec['sample_accuracy']:.3f} "
                f"latent steps {rec['sample_latent_steps']:.2f} ({rec['seconds']} s)"
            )
            acc = {"reward": 0.0, "correct": 0.0, "latent": 0.0, "n": 0}
        if validate and (step % cfg.val_every == 0 or step == cfg.steps):
            assert val is not None
            r = evaluate(model, val, max_answer_tokens=cfg.max_answer_tokens)
            history.append({"step": step, "val_accuracy": r["accuracy"], "val_latent_steps": r["mean_latent_steps"]})
            key = lambda x: (x["accuracy"] >= floor, -x["mean_latent_steps"], x["accuracy"])  # noqa: E731
            kept = key(r) > key(best[1])
            if kept:
                best = (step, r, copy.deepcopy(model.state_dict()))
            log(
                f"rl validation at step {step}: accuracy {r['accuracy']:.3f}, latent steps "
                f"{r['mean_latent_steps']:.2f}{' (best so far)' if kept else ''}"
            )
    if validate:
        model.load_state_dict(best[2])
        history.append({"kept_step": best[0]})
        log(
            f"rl: kept the checkpoint of step {best[0]} (validation accuracy {best[1]['accuracy']:.3f}, "
            f"latent steps {best[1]['mean_latent_steps']:.2f})"
        )
    model.eval()
    return history


__all__ = [
    "relative_length_rewards",
    "group_rewards",
    "grpo_advantages",
    "action_logprobs",
    "grpo_loss",
    "evaluate",
    "RLConfig",
    "train_rl",
    "STOP",
]
