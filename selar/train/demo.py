"""The CPU demo: a tiny Llama trained from scratch on synthetic multi-step arithmetic, SFT (CoT
then the latent curriculum) followed by GRPO with the relative length penalty; accuracy and mean
latent steps on held-out problems before and after RL."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .data import save_jsonl, synthetic_split
from .model import LatentReasoner
from .rl import RLConfig, evaluate, train_rl
from .sft import SFTConfig, train_sft
from .tiny import tiny_model, tiny_tokenizer


@dataclass
class DemoConfig:
    n_train: int = 4000
    n_eval: int = 500
    max_steps: int = 4                 # operations per problem: 1..max_steps
    modulus: int = 10
    hidden: int = 128
    layers: int = 4
    projection: str = "mlp"
    max_latent: int = 10
    seed: int = 0
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(cot_steps=800, steps_per_stage=400, latents_per_step=2,
                                                             batch_size=32, lr=1e-3, log_every=100))
    # RL explores lengths (stop head at temperature 3: after SFT it is nearly deterministic, so a
    # group's completions would all have one length and the relative penalty nothing to rank) and
    # penalises length among the correct completions of every group (the paper requires the whole
    # group correct, which a model at ~35% accuracy rarely reaches on this task)
    rl: RLConfig = field(default_factory=lambda: RLConfig(steps=150, prompts_per_step=8, group_size=8, lr=1e-4,
                                                          stop_temperature=3.0, length_penalty=0.1,
                                                          length_accuracy_requirement=None,
                                                          max_answer_tokens=8, log_every=10))


def split_data(cfg: DemoConfig):
    return synthetic_split(cfg.n_train, cfg.n_eval, max_steps=cfg.max_steps, modulus=cfg.modulus, seed=cfg.seed)


def run_demo(out: str | Path, cfg: DemoConfig, log: Callable[[str], None] = print) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train, ev = split_data(cfg)
    save_jsonl(train, out / "train.jsonl")
    save_jsonl(ev, out / "eval.jsonl")
    tok = tiny_tokenizer(train + ev)
    base = tiny_model(tok, hidden=cfg.hidden, layers=cfg.layers, seed=cfg.seed)
    model = LatentReasoner.from_base(base, tok, lora=False, projection=cfg.projection, max_latent=cfg.max_latent,
                                     seed=cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"demo: tiny Llama trained from scratch ({n_params / 1e6:.2f} M parameters), {len(train)} training / "
        f"{len(ev)} held-out problems with 1-{cfg.max_steps} steps (mod {cfg.modulus})")
    t = time.perf_counter()
    sft_hist = train_sft(model, train, cfg.sft, log)
    sft_s = time.perf_counter() - t
    before = evaluate(model, ev, max_answer_tokens=cfg.rl.max_answer_tokens)
    log(f"after SFT ({sft_s:.0f} s): accuracy {before['accuracy']:.3f}, mean latent steps "
        f"{before['mean_latent_steps']:.2f}")
    model.save(out / "sft")
    t = time.perf_counter()
    rl_hist = train_rl(model, train, cfg.rl, log)
    rl_s = time.perf_counter() - t
    after = evaluate(model, ev, max_answer_tokens=cfg.rl.max_answer_tokens)
    model.save(out / "rl")
    summary = {"before_rl": before, "after_rl": after, "sft_seconds": round(sft_s, 1), "rl_seconds": round(rl_s, 1),
               "total_seconds": round(time.perf_counter() - t0, 1), "parameters": n_params,
               "threads": torch.get_num_threads(), "config": asdict(cfg), "sft_history": sft_hist, "rl_history": rl_hist}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(s: dict) -> str:
    b, a = s["before_rl"], s["after_rl"]
    lines = [f"{'':<12}{'accuracy':>10}{'latent steps':>14}{'(correct)':>11}",
             f"{'before RL':<12}{b['accuracy']:>10.3f}{b['mean_latent_steps']:>14.2f}{b['mean_latent_steps_correct']:>11.2f}",
             f"{'after RL':<12}{a['accuracy']:>10.3f}{a['mean_latent_steps']:>14.2f}{a['mean_latent_steps_correct']:>11.2f}",
             f"held-out problems: {b['n']}; SFT {s['sft_seconds']:.0f} s, RL {s['rl_seconds']:.0f} s, "
             f"total {s['total_seconds']:.0f} s on {s['threads']} threads"]
    return "\n".join(lines)
