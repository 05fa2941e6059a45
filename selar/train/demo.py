"""The CPU demo of seed 003's effect: a tiny Llama trained from scratch on synthetic multi-step
arithmetic (1 to 4 operations), SFT with a latent budget above the need (so that it over-thinks),
then GRPO with the relative length penalty; accuracy and latent steps on held-out problems after
SFT and after RL, overall and by number of operations (table, plot, summary.json)."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..errors import ConfigError
from .data import save_jsonl, split_data
from .model import LatentReasoner
from .rl import RLConfig, evaluate, train_rl
from .sft import SFTConfig, train_sft
from .tiny import tiny_model, tiny_tokenizer

PLOT = "latent_steps_by_difficulty.png"
TABLE = "table.txt"


def demo_sft() -> SFTConfig:
    return SFTConfig(
        cot_steps=400,
        steps_per_stage=300,
        budget_steps=400,
        budget_lengths="need-to-budget",
        latents_per_step=1,
        budget_base=3,
        budget_per_step=1,
        thought_weight=1.0,
        batch_size=32,
        lr=1e-3,
        log_every=100,
    )


def demo_rl() -> RLConfig:
    return RLConfig(
        steps=400,
        prompts_per_step=8,
        group_size=8,
        lr=1e-4,
        stop_temperature=2.0,
        stop_temperature_end=1.0,
        length_penalty=0.2,
        length_accuracy_requirement=1.0,
        max_answer_tokens=8,
        log_every=10,
        val_every=10,
        val_tolerance=0.01,
    )


@dataclass
class DemoConfig:
    data: str = "synthetic-aligned"  # or "synthetic" (the spaced layout)
    n_train: int = 8000
    n_eval: int = 1000
    n_val: int = 500  # of the training problems, kept out of training: RL's checkpoint selection
    max_steps: int = 4  # operations per problem: 1..max_steps
    modulus: int = 10
    hidden: int = 128
    layers: int = 4
    projection: str = "mlp"
    max_latent: int = 10
    seed: int = 0
    sft: SFTConfig = field(default_factory=demo_sft)
    rl: RLConfig = field(default_factory=demo_rl)


def run_demo(
    out: str | Path,
    cfg: DemoConfig,
    log: Callable[[str], None] = print,
    tick: Optional[Callable[[str, int, int, str], None]] = None,
) -> dict:
    """Data, SFT, evaluation, RL, evaluation; writes the data, both adapters, summary.json, the table
    and the plot to `out`, and returns the summary."""
    if not 0 <= cfg.n_val < cfg.n_train:
        raise ConfigError(f"need 0 <= n_val < n_train, got n_val {cfg.n_val}, n_train {cfg.n_train}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg.sft.seed = cfg.rl.seed = cfg.seed
    train, ev = split_data(
        cfg.data, cfg.n_train, cfg.n_eval, max_steps=cfg.max_steps, modulus=cfg.modulus, seed=cfg.seed
    )
    train, val = train[: len(train) - cfg.n_val], train[len(train) - cfg.n_val :]
    save_jsonl(train, out / "train.jsonl")
    save_jsonl(val, out / "val.jsonl")
    save_jsonl(ev, out / "eval.jsonl")
    tok = tiny_tokenizer(train + val + ev)
    base = tiny_model(tok, hidden=cfg.hidden, layers=cfg.layers, seed=cfg.seed)
    model = LatentReasoner.from_base(
        base, tok, lora=False, projection=cfg.projection, max_latent=cfg.max_latent, seed=cfg.seed
    )
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"demo: tiny Llama trained from scratch ({n_params / 1e6:.2f} M parameters), {len(train)} training / "
        f"{len(ev)} held-out problems with 1-{cfg.max_steps} operations (mod {cfg.modulus}), seed {cfg.seed}"
    )
    t = time.perf_counter()
    sft_hist = train_sft(model, train, cfg.sft, log, tick)
    sft_s = time.perf_counter() - t
    before = evaluate(model, ev, max_answer_tokens=cfg.rl.max_answer_tokens)
    log(
        f"after SFT ({sft_s:.0f} s): accuracy {before['accuracy']:.3f}, mean latent steps "
        f"{before['mean_latent_steps']:.2f}"
    )
    model.save(out / "sft")
    t = time.perf_counter()
    rl_hist = train_rl(model, train, cfg.rl, log, tick, val=val)
    rl_s = time.perf_counter() - t
    after = evaluate(model, ev, max_answer_tokens=cfg.rl.max_answer_tokens)
    model.save(out / "rl")
    summary = {
        "after_sft": before,
        "after_rl": after,
        "sft_seconds": round(sft_s, 1),
        "rl_seconds": round(rl_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "parameters": n_params,
        "threads": torch.get_num_threads(),
        "config": asdict(cfg),
        "sft_history": sft_hist,
        "rl_history": rl_hist,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / TABLE).write_text(format_summary(summary) + "\n")
    plot_by_difficulty([summary], out / PLOT)
    return summary


def _ops(r: dict) -> list[str]:
    return sorted(r["by_ops"], key=int)


def table_row(label: str, r: dict) -> str:
    lo, hi = r["accuracy_ci95"]
    acc = f"{r['accuracy']:.3f} ({lo:.3f}-{hi:.3f})"
    by = "/".join(f"{r['by_ops'][k]['mean_latent_steps']:.2f}" for k in _ops(r))
    return f"{label:<14}{acc:<22}{r['mean_latent_steps']:<20.2f}{by}"


def format_summary(s: dict) -> str:
    """The table of one run (accuracy with its 95% interval, mean latent steps, by #operations)."""
    b, a = s["after_sft"], s["after_rl"]
    ops = "/".join(_ops(b))
    change = (a["mean_latent_steps"] - b["mean_latent_steps"]) / b["mean_latent_steps"] if b["mean_latent_steps"] else 0
    lines = [
        f"{'':<14}{'accuracy (95% CI)':<22}{'mean latent steps':<20}by #ops ({ops})",
        table_row("after SFT", b),
        table_row("after RL", a),
        f"latent steps {100 * change:+.1f}%, accuracy {100 * (a['accuracy'] - b['accuracy']):+.1f} points; "
        f"{b['n']} held-out problems; SFT {s['sft_seconds']:.0f} s, RL {s['rl_seconds']:.0f} s, "
        f"total {s['total_seconds']:.0f} s on {s['threads']} threads",
    ]
    return "\n".join(lines)


def load_summaries(dirs: Sequence[str | Path]) -> list[dict]:
    out = []
    for d in dirs:
        p = Path(d) / "summary.json"
        if not p.is_file():
            from ..errors import ConfigError

            raise ConfigError(f"{d} holds no summary.json (a directory written by `selar train demo`)")
        out.append(json.loads(p.read_text()))
    return out


def format_seeds(summaries: Sequence[dict]) -> str:
    """One line per run (seed) and the mean +- standard deviation of the change in latent steps and
    in accuracy over the runs."""
    lines = [
        f"{'seed':<6}{'acc SFT':>9}{'acc RL':>9}{'Δ acc (pts)':>13}{'steps SFT':>11}{'steps RL':>10}"
        f"{'Δ steps':>10}{'minutes':>9}"
    ]
    d_acc, d_steps = [], []
    for s in summaries:
        b, a = s["after_sft"], s["after_rl"]
        da = 100 * (a["accuracy"] - b["accuracy"])
        ds = 100 * (a["mean_latent_steps"] - b["mean_latent_steps"]) / max(b["mean_latent_steps"], 1e-9)
        d_acc.append(da)
        d_steps.append(ds)
        lines.append(
            f"{s['config']['seed']:<6}{b['accuracy']:>9.3f}{a['accuracy']:>9.3f}{da:>+13.1f}"
            f"{b['mean_latent_steps']:>11.2f}{a['mean_latent_steps']:>10.2f}{ds:>+9.1f}%"
            f"{s['total_seconds'] / 60:>9.1f}"
        )
    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else math.nan
    lines.append(
        f"mean over {len(summaries)} runs: latent steps {statistics.mean(d_steps):+.1f}% "
        f"(sd {sd(d_steps):.1f}), accuracy {statistics.mean(d_acc):+.1f} points (sd {sd(d_acc):.1f})"
    )
    return "\n".join(lines)


def plot_by_difficulty(summaries: Sequence[dict], path: str | Path) -> Path:
    """Mean latent steps per number of operations after SFT and after RL (one thin line per run,
    the mean over runs thick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, color, label in (("after_sft", "tab:blue", "after SFT"), ("after_rl", "tab:orange", "after RL")):
        ops = _ops(summaries[0][key])
        runs = [[s[key]["by_ops"][k]["mean_latent_steps"] for k in ops] for s in summaries]
        x = [int(k) for k in ops]
        if len(runs) > 1:
            for r in runs:
                ax.plot(x, r, color=color, alpha=0.3, lw=1)
        mean = [statistics.mean(c) for c in zip(*runs)]
        acc = statistics.mean(s[key]["accuracy"] for s in summaries)
        ax.plot(x, mean, color=color, lw=2.5, marker="o", label=f"{label} (accuracy {acc:.3f})")
    ax.set_xlabel("operations in the problem")
    ax.set_ylabel("mean latent steps (greedy)")
    ax.set_xticks(x)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Latent steps by difficulty ({len(summaries)} run{'s' if len(summaries) > 1 else ''})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
