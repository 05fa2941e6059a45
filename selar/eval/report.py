"""`selar report`: merge result files (several runs or shards), write report.md, report.csv and
PNG plots, and print the paper-style table (methods as rows, datasets and their average as columns)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Optional

from ..errors import SelarError
from .budget import budget_section
from .html import write_html
from .merge import BASELINE, read_runs
from .metrics import Summary, summarize
from .ranking import ranking_section
from .tables import markdown

DATASET_ORDER = ["gsm8k", "math500", "gpqa", "aime2024", "aime2025"]
METHOD_ORDER = ["cot", "soft-thinking", "swir", "selar"]


def collect(dirs: list[str]) -> tuple[list[dict], list[dict]]:
    """All records and timings of the dirs (see `merge.read_runs`: rows of one method run with
    different settings are kept apart, their "method" being the row's label)."""
    runs = read_runs(dirs)
    return runs.records, runs.timings


def _order(names, preferred):
    """Names in the preferred order, then the others sorted; a row label (`selar@tau=0.3`) beside its method."""
    return sorted(names, key=lambda n: _rank(n, preferred))


def table(summaries: list[Summary]) -> tuple[list[str], list[list[str]]]:
    datasets = _order({s.dataset for s in summaries}, DATASET_ORDER)
    methods = _order({s.method for s in summaries}, METHOD_ORDER)
    by = {(s.dataset, s.method): s for s in summaries}
    header = ["method"] + datasets + (["avg"] if len(datasets) > 1 else []) + ["tokens", "TPCA", "soft %"]
    rows = []
    for m in methods:
        cells, accs, toks, tpcas, softs = [m], [], [], [], []
        for d in datasets:
            s = by.get((d, m))
            if s is None:
                cells.append("-")
                continue
            sig = _vs_cot(s, by.get((d, s.baseline)) if s.baseline else None)
            cells.append(f"{s.accuracy * 100:.1f} [{s.ci_low * 100:.1f}, {s.ci_high * 100:.1f}]{sig}")
            accs.append(s.accuracy)
            toks.append(s.tokens)
            softs.append(s.soft_share)
            if s.tpca is not None:
                tpcas.append(s.tpca)
        if len(datasets) > 1:
            cells.append(f"{sum(accs) / len(accs) * 100:.1f}" if len(accs) == len(datasets) else "-")
        cells.append(f"{sum(toks) / len(toks):.0f}" if toks else "-")
        cells.append(f"{sum(tpcas) / len(tpcas):.0f}" if tpcas else "-")
        cells.append(f"{sum(softs) / len(softs) * 100:.1f}" if softs else "-")
        rows.append(cells)
    return header, rows


def _vs_cot(s: Summary, base: Optional[Summary]) -> str:
    """A cell's comparison with its cot row `base`: (difference, p-value), naming that row when it is
    not plain `cot`, and the number of problems the difference is over when fewer than either row's."""
    if s.p_vs_cot is None or s.delta_vs_cot is None:
        return ""
    vs = f" vs {s.baseline}" if s.baseline != BASELINE else ""
    fewer = s.paired is not None and (s.paired != s.problems or (base is not None and s.paired != base.problems))
    p = s.p_holm if s.p_holm is not None else s.p_vs_cot
    return f" ({s.delta_vs_cot * 100:+.1f}{vs}, p={p:.2f}{f', on {s.paired} paired' if fewer else ''})"


def length_table(summaries: list[Summary]) -> tuple[list[str], list[list[str]]]:
    """Per dataset and method: mean and longest generation, the share cut by the token limit,
    (thinking models) the share that never wrote </think>, and the share of answers that box a
    result and whose boxed result is malformed (e.g. `\\boxedboxed{72}`)."""
    header = [
        "dataset",
        "method",
        "mean tokens",
        "max tokens",
        "cut by limit %",
        "no </think> %",
        "boxed %",
        "malformed boxed %",
    ]

    def pct(v: Optional[float]) -> str:
        return "-" if v is None else f"{v * 100:.1f}"

    rows = []
    for s in sorted(summaries, key=lambda x: (_rank(x.dataset, DATASET_ORDER), _rank(x.method, METHOD_ORDER))):
        rows.append(
            [
                s.dataset,
                s.method,
                f"{s.tokens:.0f}",
                "-" if s.max_tokens is None else str(s.max_tokens),
                pct(s.truncated),
                pct(s.no_think_end),
                pct(s.boxed),
                pct(s.malformed_boxed),
            ]
        )
    return header, rows


DETAIL_COLUMNS = (
    "dataset",
    "method",
    "problems",
    "samples",
    "accuracy",
    "tokens",
    "tokens_correct",
    "tokens_wrong",
    "tpca",
    "soft_share",
    "seconds",
    "tokens_per_s",
    "baseline",
    "paired",
    "delta_vs_cot",
    "p_vs_cot",
    "p_holm",
    "test_vs_cot",
)


def details_table(summaries: list[Summary]) -> tuple[list[str], list[list[str]]]:
    """Every summary field of the report's "Details" section, one row per (dataset, method)."""

    def fmt(v) -> str:
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    cols = list(DETAIL_COLUMNS)
    return cols, [[fmt(s.to_dict()[c]) for c in cols] for s in summaries]


def _rank(name: str, preferred: list[str]) -> tuple[int, str, list]:
    """Preferred names first; a label's numbers in numeric order (`force_answer_at=64` before `=128`)."""
    base = name.partition("@")[0]
    natural = [int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", name))]
    return (preferred.index(base) if base in preferred else len(preferred), base, natural)


def plots(summaries: list[Summary], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    datasets = _order({s.dataset for s in summaries}, DATASET_ORDER)
    methods = _order({s.method for s in summaries}, METHOD_ORDER)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = "osD^v<>p*h"
    for j, d in enumerate(datasets):
        for i, m in enumerate(methods):
            s = next((x for x in summaries if x.dataset == d and x.method == m), None)
            if s is None:
                continue
            ax.errorbar(
                s.tokens,
                s.accuracy * 100,
                yerr=[[(s.accuracy - s.ci_low) * 100], [(s.ci_high - s.accuracy) * 100]],
                fmt=markers[j % len(markers)],
                color=f"C{i}",
                capsize=3,
                label=m if j == 0 else None,
            )
    ax.set_xlabel("mean generated tokens")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(
        "accuracy vs tokens (" + ", ".join(f"{markers[j % len(markers)]}={d}" for j, d in enumerate(datasets)) + ")"
    )
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    p = out / "accuracy_vs_tokens.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(datasets) + 2), 4.5))
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        xs: list[float] = []
        ys: list[float] = []
        errs: list[list[float]] = [[], []]
        for j, d in enumerate(datasets):
            s = next((x for x in summaries if x.dataset == d and x.method == m), None)
            if s is None:
                continue
            xs.append(j + (i - (len(methods) - 1) / 2) * width)
            ys.append(s.accuracy * 100)
            errs[0].append((s.accuracy - s.ci_low) * 100)
            errs[1].append((s.ci_high - s.accuracy) * 100)
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=m, color=f"C{i}")
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy per dataset (95% interval)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    p = out / "accuracy_by_dataset.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)
    return paths


ACCURACY_NOTE = (
    "Accuracy (%) as avg@N with a 95% interval; against `cot` (the `cot` row of the same model, engine, "
    "dtype, prompt and protocol): (difference, p-value of a paired test: McNemar's exact test with one sample, "
    "a paired bootstrap with several), over the problems both rows answered; when that is fewer than either "
    "row's, the cell says on how many (`paired`, also in Details). The p-values are Holm-corrected across "
    "the dataset's comparisons with cot (uncorrected: `p_vs_cot` in Details)."
)


def sampled_table(summaries: list[Summary]) -> tuple[list[str], list[list[str]]]:
    """pass@k and maj@N (%) with 95% intervals, for the rows with several samples per problem."""
    rows_of = [s for s in summaries if s.sampled]
    keys: list[str] = []
    for s in rows_of:
        keys += [k for k in s.sampled or {} if k not in keys]
    rows = [
        [s.dataset, s.method, str(s.samples)]
        + [
            f"{v[0] * 100:.1f} [{v[1] * 100:.1f}, {v[2] * 100:.1f}]" if (v := (s.sampled or {}).get(k)) else "-"
            for k in keys
        ]
        for s in rows_of
    ]
    return ["dataset", "method", "samples", *keys], rows


def _sampled_section(summaries: list[Summary]) -> list[str]:
    header, rows = sampled_table(summaries)
    if not rows:
        return []
    return [
        "## pass@k and majority vote",
        "",
        "pass@k: the unbiased estimator of Chen et al. (2021) from the N samples of each problem; maj@N: the "
        "majority answer of the N samples (answers grouped by math-verify equivalence, unanswered samples not "
        "voting, a tie to the earliest) is right. Mean over problems with a normal 95% interval.",
        "",
        markdown(header, rows),
        "",
    ]


def calibration_notes(calibration: dict[str, dict]) -> list[str]:
    """A sentence per (dataset, method) whose tau was calibrated (tau=auto)."""
    return [
        f"`{key}`: tau=auto chose tau={c['tau']:.3f} on {c['prompts']} of the dataset's prompts (no labels): "
        f"{c['soft_share'] * 100:.1f}% of their {c['steps']} steps above it, for a target of "
        f"{c['soft_target'] * 100:.0f}%."
        for key, c in sorted(calibration.items())
    ]


def notes(split: dict[str, list[str]]) -> list[str]:
    """A sentence per method whose runs had different settings and are kept apart."""
    return [
        f"`{m}` was run with different settings; its runs are kept apart as "
        + ", ".join(f"`{r}`" for r in rows)
        + " (labelled with the settings that differ)."
        for m, rows in split.items()
    ]


def write_report(dirs: list[str], out_dir: str | None = None, make_plots: bool = True, html: bool = False) -> dict:
    runs = read_runs(dirs)
    if not runs.records:
        raise SelarError(f"no results*.jsonl in {', '.join(dirs)}")
    summaries = summarize(runs.records, runs.timings, baselines=runs.baselines)
    out = Path(out_dir or dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    header, rows = table(summaries)
    length, details = length_table(summaries), details_table(summaries)
    budget_lines, budget_images = budget_section(runs.records, out, make_plots, runs.forced)
    md = [
        "# selar report",
        "",
        f"Runs: {', '.join(dirs)}",
        "",
        f"Model{'s' if len(runs.models) > 1 else ''}: {'; '.join(runs.models)}",
        "",
        *[f"{note}\n" for note in notes(runs.split) + calibration_notes(runs.calibration)],
        ACCURACY_NOTE,
        "",
        markdown(header, rows),
        "",
        *ranking_section(summaries),
        "## Length, truncation and answer form",
        "",
        "Generations cut by the token limit, and (thinking models) generations that never closed their "
        "reasoning with </think>: a high share means the limit, not the method, decided the answer. "
        "Boxed: answers with a \\boxed result; malformed: a \\boxed not followed by a brace, an unclosed "
        "brace, or a boxed result that is empty or does not parse.",
        "",
        markdown(*length),
        "",
        *_sampled_section(summaries),
        *budget_lines,
        "## Details",
        "",
        markdown(*details),
    ]
    images = (plots(summaries, out) if make_plots else []) + budget_images
    md += [""] + [f"![{p.stem}]({p.name})" for p in images]
    (out / "report.md").write_text("\n".join(md) + "\n")
    with open(out / "report.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summaries[0].to_dict()))
        w.writeheader()
        for s in summaries:
            w.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in s.to_dict().items()})
    (out / "report.json").write_text(json.dumps([s.to_dict() for s in summaries], indent=1))
    rep = {"header": header, "rows": rows, "length": length, "details": details, "summaries": summaries}
    rep.update(models=runs.models, notes=notes(runs.split))
    rep.update(out=out, images=images)
    if html:
        rep["html"] = write_html(rep, dirs, out)
    return rep
