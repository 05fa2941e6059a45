"""Accuracy against generated tokens, per dataset and method, as tables and plots.

- Within a budget: for each token budget B, the share of generations that are right having used
  at most B tokens (a generation over the budget counts as unanswered), read from the records of
  runs with a generous limit; no answer is forced at B.
- With the answer forced at the budget, as SwiR's evaluation does: runs made with
  `--set force_answer_at=B` (one run per budget, merged by `selar report dirA dirB ...`); a row
  that reached B tokens was made to write "The final answer is" and graded on what followed. The
  merge (`merge.Runs.forced`) says which rows are forced and at which budget (from each run's
  run.json); a table has one row per (dataset, method) and one column per budget found."""

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


def forced_curves(
    records: list[dict], forced: dict[str, tuple[str, int]]
) -> tuple[list[int], dict[tuple[str, str], dict[int, float]]]:
    """(the budgets found, {(dataset, method): {budget: accuracy}}) over the records of forced rows
    (`forced`: row label -> (method label without the budget, budget))."""
    groups: dict[tuple[str, str], dict[int, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["method"] in forced:
            method, b = forced[r["method"]]
            groups[(r["dataset"], method)][b].append(bool(r["correct"]))
    budgets = sorted({b for _, b in forced.values()})
    return budgets, {key: {b: sum(v) / len(v) for b, v in by.items()} for key, by in sorted(groups.items())}


def forced_section(
    records: list[dict], forced: dict[str, tuple[str, int]], out: Path, make_plots: bool
) -> tuple[list[str], list[Path]]:
    """The report's section of accuracy with the answer forced at the budget (none without forced
    rows), and its plot."""
    budgets, curves = forced_curves(records, forced)
    if not curves:
        return [], []
    header = ["dataset", "method", *[f"@ {b}" for b in budgets]]
    rows = [[d, m, *[f"{acc[b] * 100:.1f}" if b in acc else "-" for b in budgets]] for (d, m), acc in curves.items()]
    lines = [
        "## Accuracy with the answer forced at the budget",
        "",
        "Accuracy (%) of runs made with `--set force_answer_at=B`, as SwiR's evaluation does: a generation "
        'that reached B tokens without ending was made to write "</think>" (when its reasoning was open) and '
        '"The final answer is", then up to `forced_answer_tokens` more tokens, and was graded on that. Each '
        "row of the main table labelled `force_answer_at=B` is one cell here.",
        "",
        markdown(header, rows),
        "",
    ]
    if not make_plots:
        return lines, []
    full = {key: [acc.get(b, float("nan")) for b in budgets] for key, acc in curves.items()}
    return lines, [_plot(full, budgets, out, "accuracy_forced_at_budget.png", "answer forced at the budget")]


def budget_section(
    records: list[dict], out: Path, make_plots: bool, forced: dict[str, tuple[str, int]] | None = None
) -> tuple[list[str], list[Path]]:
    """The report's budget sections (Markdown lines) and their plots: accuracy within a budget (of
    the rows whose answer was not forced) and, for the forced rows, with the answer forced there."""
    forced = forced or {}
    lines, paths = forced_section(records, forced, out, make_plots)
    records = [r for r in records if r["method"] not in forced]
    if not records:
        return lines, paths
    budgets = budgets_for(max(int(r["num_tokens"]) for r in records))
    curves = budget_curves(records, budgets)
    header = ["dataset", "method", *[f"<= {b}" for b in budgets]]
    rows = [[d, m, *[f"{a * 100:.1f}" for a in accs]] for (d, m), accs in curves.items()]
    within_lines = [
        "## Accuracy within a token budget",
        "",
        "Accuracy (%) counting a generation right only if it used at most that many generated tokens "
        "(read from these runs' records; no answer is forced at the budget).",
        "",
        markdown(header, rows),
        "",
    ]
    within = [_plot(curves, budgets, out, "accuracy_vs_budget.png", "accuracy within a budget")] if make_plots else []
    return within_lines + lines, within + paths


def _plot(curves: dict[tuple[str, str], list[float]], budgets: list[int], out: Path, name: str, title: str) -> Path:
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
        ax.set_title(f"{d}: {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / name
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p
