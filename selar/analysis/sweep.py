"""Threshold sweep: the evaluation harness run per (tau, k), resumable, plotted against tau."""

from __future__ import annotations

import json
from pathlib import Path

from ..eval.metrics import summarize
from ..eval.report import collect
from ..eval.runner import EvalConfig, run_eval


def run(
    model,
    model_name: str,
    dataset: str,
    out_dir: str,
    taus=(0.3, 0.4, 0.5, 0.6, 0.7),
    ks=(3,),
    limit=None,
    samples: int = 1,
    seed: int = 0,
    sets=None,
    batch_size: int = 8,
    baseline: bool = True,
    data_files=None,
    progress: bool = True,
    schedule: str = "continuous",
) -> dict:
    out = Path(out_dir)
    settings = [("cot", None, None)] if baseline else []
    settings += [(f"tau{t:g}_k{k}", t, k) for k in ks for t in taus]
    rows = []
    for name, tau, k in settings:
        s = dict(sets or {})
        if tau is not None:
            s.update({"selar.tau": tau, "selar.k": k})
        cfg = EvalConfig(
            model=model_name,
            datasets=[dataset],
            methods=["cot" if tau is None else "selar"],
            samples=samples,
            limit=limit,
            seed=seed,
            sets=s,
            batch_size=batch_size,
            data_files=data_files or {},
            schedule=schedule,
        )
        d = out / name
        run_eval(cfg, str(d), resume=(d / "run.json").is_file(), model=model, progress=progress)
        summ = summarize(*collect([str(d)]))[0]
        rows.append(
            {
                "setting": name,
                "tau": tau,
                "k": k,
                "accuracy": summ.accuracy,
                "ci_low": summ.ci_low,
                "ci_high": summ.ci_high,
                "tokens": summ.tokens,
                "soft_share": summ.soft_share,
                "problems": summ.problems,
            }
        )
    (out / "sweep.json").write_text(json.dumps(rows, indent=1))
    return {"rows": rows, "plot": str(plot(rows, out, dataset))}


def plot(rows: list[dict], out: Path, dataset: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    base = next((r for r in rows if r["tau"] is None), None)
    for i, k in enumerate(sorted({r["k"] for r in rows if r["k"] is not None})):
        rs = sorted((r for r in rows if r["k"] == k), key=lambda r: r["tau"])
        taus = [r["tau"] for r in rs]
        acc = [r["accuracy"] * 100 for r in rs]
        err = [[(r["accuracy"] - r["ci_low"]) * 100 for r in rs], [(r["ci_high"] - r["accuracy"]) * 100 for r in rs]]
        a.errorbar(taus, acc, yerr=err, marker="o", capsize=3, color=f"C{i}", label=f"selar k={k}")
        b.plot(taus, [r["tokens"] for r in rs], marker="o", color=f"C{i}", label=f"selar k={k}")
    if base:
        a.axhline(base["accuracy"] * 100, color="0.4", ls="--", label="cot")
        b.axhline(base["tokens"], color="0.4", ls="--", label="cot")
    a.set_xlabel("tau")
    a.set_ylabel("accuracy (%)")
    a.set_title(f"{dataset}: accuracy vs tau (95% interval)")
    b.set_xlabel("tau")
    b.set_ylabel("mean generated tokens")
    b.set_title(f"{dataset}: tokens vs tau")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "sweep.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
