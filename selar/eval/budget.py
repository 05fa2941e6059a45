"""Accuracy against generated tokens: for each token budget B, the share of generations that are
right having used at most B tokens (a generation over the budget counts as unanswered), per dataset
and method, as a table and a plot. It reads the records of a run with a generous limit; it does not
force an answer at B (a run with `max_new_tokens=B` does)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .tables import markdown


def budgets_for(max_tokens: int, start: int = 64) -> list[int]:
    """Powers of two from `start` below `max_tokens`, then `max_tokens` itself."""
    out, b = [], start
    while b < max_tokens:
        out.append(b)
        b *= 2
    return out + [max_tokens]


def budget_curves(records: list[dict], budgets: list[int]) -> dict[tuple[str, str], list[float]]:
    """{(dataset, method): [accuracy within each budget]} over all of a row's generations."""
    groups: dict[tuple[str, str], list[tuple[bool, int]]] = defaultdict(list)
    for r in records:
        groups[(r["dataset"], r["method"])].append((bool(r["correct"]), int(r["num_tokens"])))
    return {
        key: [sum(ok and n <= b for ok, n in recs) / len(recs) for b in budgets] for key, recs in sorted(groups.items())
    }


def budget_section(records: list[dict], out: Path, make_plots: bool) -> tuple[list[str], list[Path]]:
    """The report's budget section (Markdown lines) and its plot."""
    if not records:
        return [], []
    budgets = budgets_for(max(int(r["num_tokens"]) for r in records))
    curves = budget_curves(records, budgets)
    header = ["dataset", "method", *[f"<= {b}" for b in budgets]]
    rows = [[d, m, *[f"{a * 100:.1f}" for a in accs]] for (d, m), accs in curves.items()]
    lines = [
        "## Accuracy within a token budget",
        "",
        "Accuracy (%) counting a generation right only if it used at most that many generated tokens "
        "(read from these runs' records; no answer is forced at the budget).",
        "",
        markdown(header, rows),
        "",
    ]
    paths = [_plot(curves, budgets, out)] if make_plots else []
    return lines, paths


def _plot(curves: dict[tuple[str, str], list[float]], budgets: list[int], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({d for d, _ in curves})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        for (dd, m), accs in curves.items():
            if dd == d:
                ax.plot(budgets, [a * 100 for a in accs], marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("token budget")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{d}: accuracy within a budget")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / "accuracy_vs_budget.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p
