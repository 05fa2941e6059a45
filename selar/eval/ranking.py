"""The report's ranking: methods ordered by their mean accuracy over the report's datasets, with
what else decides between them (pass@k and maj@N with several samples, tokens, TPCA, soft share,
wall time) and their Holm-corrected p-values against cot on each dataset."""

from __future__ import annotations

from collections import defaultdict

from .metrics import Summary
from .tables import markdown


def ranking_table(summaries: list[Summary]) -> tuple[list[str], list[list[str]]]:
    datasets = sorted({s.dataset for s in summaries})
    by_method: dict[str, list[Summary]] = defaultdict(list)
    for s in summaries:
        by_method[s.method].append(s)
    complete = {m: ss for m, ss in by_method.items() if len(ss) == len(datasets)}  # ranked on the same datasets
    sampled = sorted(
        {k for s in summaries for k in (s.sampled or {})}, key=lambda k: (k[0] != "p", int(k.split("@")[1]))
    )

    def mean(vals):
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else None

    def pct(v):
        return "-" if v is None else f"{v * 100:.1f}"

    rows: list[list[str]] = []
    for m, ss in sorted(complete.items(), key=lambda kv: -sum(s.accuracy for s in kv[1])):
        cells = [m, pct(mean([s.accuracy for s in ss]))]
        cells += [pct(mean([(s.sampled or {}).get(k, (None,))[0] for s in ss])) for k in sampled]
        tokens, tpca = mean([s.tokens for s in ss]), mean([s.tpca for s in ss])
        cells += ["-" if tokens is None else f"{tokens:.0f}", "-" if tpca is None else f"{tpca:.0f}"]
        cells += [pct(mean([s.soft_share for s in ss]))]
        secs = [s.seconds for s in ss if s.seconds]
        cells += [f"{sum(secs):.0f}" if secs else "-"]
        by_d = {s.dataset: s for s in ss}
        cells += [
            "-" if by_d[d].p_holm is None else f"{(by_d[d].delta_vs_cot or 0) * 100:+.1f}, p={by_d[d].p_holm:.3f}"
            for d in datasets
        ]
        rows.append([f"{len(rows) + 1}", *cells])
    header = ["rank", "method", "accuracy %", *[f"{k} %" for k in sampled], "tokens", "TPCA", "soft %", "seconds"]
    return header + [f"vs cot on {d} (Holm)" for d in datasets], rows


def ranking_section(summaries: list[Summary]) -> list[str]:
    header, rows = ranking_table(summaries)
    if len(rows) < 3:  # a ranking says something only with several methods
        return []
    return [
        "## Ranking",
        "",
        "Methods ordered by accuracy averaged over the datasets they all ran (avg@N); pass@k and maj@N "
        "averaged likewise; seconds: decoding wall time summed over the datasets; against cot: the "
        "difference in points and the Holm-corrected p-value of the paired test on each dataset.",
        "",
        markdown(header, rows),
        "",
    ]
