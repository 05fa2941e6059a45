"""Distribution of the normalised top-k entropy over all decoding steps of chain-of-thought:
histogram with tau marked, share of steps above each tau, and a per-position view."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..api import format_prompt, new_session
from ..decode import run_continuous
from ..errors import ConfigError
from ..methods import make_config
from ..methods.base import topk_entropy

TAUS = (0.3, 0.4, 0.5, 0.6, 0.7)


class TopkTrace:
    """A method whose traced signal is the normalised top-k entropy of p_t, whatever the method
    traces itself (SwiR's is the full-vocabulary entropy in nats); what it feeds is unchanged."""

    def __init__(self, method, k: int):
        if method.num_candidates < k:
            raise ConfigError(
                f"method {method.name!r} reads {method.num_candidates} candidates of p_t; trace k={k} needs as many"
            )
        self.method, self.k = method, k
        self.name, self.num_candidates = method.name, method.num_candidates
        self.needs_hidden = getattr(method, "needs_hidden", False)

    def init_state(self, n, device):
        return self.method.init_state(n, device)

    def step(self, ctx, state):
        return replace(self.method.step(ctx, state), entropy=topk_entropy(ctx.cand_probs, self.k))


def collect(model, prompts: list[str], method: str = "cot", batch_size: int = 8, progress=None, **options):
    """Per prompt, the normalised top-k entropy of every step (the method's `k`, 3 for methods
    without one), decoded with the method and continuous batching (a finished row is replaced by
    the next prompt at once)."""
    cfg = make_config(method, **options)
    ids = [format_prompt(model, p) for p in prompts]
    out = {}
    model.expect_work(len(ids) * cfg.sampling.max_new_tokens)  # a sweep: compile="auto" may compile
    session = new_session(model, cfg)
    session.method = TopkTrace(session.method, getattr(cfg.options, "k", 3))
    for row in run_continuous(session, ids, [cfg.sampling.seed] * len(ids), batch_size):
        out[row.id] = row.entropy
        if progress:
            progress(1)
    return [out[i] for i in range(len(prompts))]


def summarize(seqs: list[list[float]], taus=TAUS, bins: int = 20, positions: int = 10) -> dict:
    allv = np.array([v for s in seqs for v in s], dtype=float)
    hist, edges = np.histogram(allv, bins=bins, range=(0.0, 1.0))
    # position view: each sequence cut into `positions` equal parts (relative position)
    pos_mean = np.zeros(positions)
    pos_share = {t: np.zeros(positions) for t in taus}
    counts = np.zeros(positions)
    for s in seqs:
        if not s:
            continue
        v = np.array(s)
        idx = np.minimum((np.arange(len(v)) * positions) // len(v), positions - 1)
        for j in range(positions):
            sel = v[idx == j]
            if len(sel):
                pos_mean[j] += sel.mean()
                counts[j] += 1
                for t in taus:
                    pos_share[t][j] += (sel > t).mean()
    counts = np.maximum(counts, 1)
    return {
        "steps": int(allv.size),
        "sequences": len(seqs),
        "mean": float(allv.mean()) if allv.size else None,
        "median": float(np.median(allv)) if allv.size else None,
        "quantiles": {q: float(np.quantile(allv, q)) for q in (0.5, 0.75, 0.9, 0.95, 0.99)} if allv.size else {},
        "share_above": {str(t): float((allv > t).mean()) if allv.size else None for t in taus},
        "histogram": {"edges": edges.tolist(), "counts": hist.tolist()},
        "by_position": {
            "mean": (pos_mean / counts).tolist(),
            "share_above": {str(t): (pos_share[t] / counts).tolist() for t in taus},
        },
    }


def plot(summary: dict, out: Path, tau: float = 0.5) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    edges = np.array(summary["histogram"]["edges"])
    counts = np.array(summary["histogram"]["counts"])
    share = counts / max(counts.sum(), 1)
    a.bar(edges[:-1], share * 100, width=np.diff(edges), align="edge", color="C0", edgecolor="white")
    a.set_yscale("log")
    for t, v in summary["share_above"].items():
        a.axvline(float(t), color="C3" if float(t) == tau else "0.6", ls="--" if float(t) == tau else ":", lw=1.2)
    a.set_title(
        f"normalised top-k entropy of {summary['steps']} steps\n"
        f"share above tau={tau}: {summary['share_above'][str(tau)] * 100:.1f}%"
    )
    a.set_xlabel("normalised entropy H / log k")
    a.set_ylabel("share of steps (%, log scale)")
    pos = np.arange(len(summary["by_position"]["mean"]))
    width = 100 / len(pos)
    for t, ys in summary["by_position"]["share_above"].items():
        b.plot(pos * width + width / 2, np.array(ys) * 100, marker="o", label=f"tau={t}")
    b.set_xlabel("position in the generation (%)")
    b.set_ylabel("steps above tau (%)")
    b.set_title("uncertain steps along the generation")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "entropy.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(
    model,
    prompts: list[str],
    out_dir: str,
    method: str = "cot",
    tau: float = 0.5,
    batch_size: int = 8,
    progress=None,
    **options,
) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seqs = collect(model, prompts, method, batch_size, progress, **options)
    summary = summarize(seqs, taus=tuple(sorted(set(TAUS) | {tau})))  # the plot marks `tau`, whatever it is
    (out / "entropy.json").write_text(json.dumps({"summary": summary, "sequences": seqs}))
    summary["plot"] = str(plot(summary, out, tau))
    return summary
