"""Metrics of the papers: avg@N accuracy with a 95% interval, mean tokens (all / correct /
wrong), TPCA, share of soft steps, time and tokens/s, and a paired test against `cot`; and the
length report: the share of generations cut by the token limit and, for thinking models, the
share that never closed their reasoning."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from .grading import boxed_form
from .sampled import holm, sampled_metrics


@dataclass
class Summary:
    dataset: str
    method: str
    problems: int
    samples: int  # generations per problem (N of avg@N)
    accuracy: float  # avg@N
    ci_low: float
    ci_high: float
    tokens: float  # mean generated tokens, all answers
    tokens_correct: Optional[float]
    tokens_wrong: Optional[float]
    tpca: Optional[float]  # total generated tokens / number of correct answers
    soft_share: float  # soft steps / generated tokens
    seconds: Optional[float]
    tokens_per_s: Optional[float]
    delta_vs_cot: Optional[float] = None
    p_vs_cot: Optional[float] = None
    test_vs_cot: Optional[str] = None
    truncated: Optional[float] = None  # share of generations cut by the token limit
    no_think_end: Optional[float] = None  # thinking models: share that never wrote </think>
    max_tokens: Optional[int] = None  # longest generation
    boxed: Optional[float] = None  # share of answers that box a result (well-formed or not)
    malformed_boxed: Optional[float] = None  # share of answers whose boxed result is malformed
    baseline: Optional[str] = None  # the row the delta and p-value are against (a cot row)
    paired: Optional[int] = None  # problems both this row and its baseline answered: the delta's problems
    p_holm: Optional[float] = None  # p_vs_cot, Holm-corrected across the dataset's comparisons
    sampled: Optional[dict] = None  # samples > 1: {"pass@k": (mean, low, high), ..., "maj@N": ...}

    def to_dict(self) -> dict:
        return asdict(self)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap(diffs: np.ndarray, n_boot: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value that the mean paired difference is 0."""
    if len(diffs) == 0 or np.all(diffs == 0):
        return 1.0
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(n_boot, len(diffs)))].mean(1)
    p = 2 * min((means <= 0).mean(), (means >= 0).mean())
    return float(min(1.0, p))


def by_problem(records: list[dict]) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for r in records:
        out[r["problem_id"]].append(r)
    return out


def per_problem(records: list[dict]) -> dict[str, float]:
    acc = defaultdict(list)
    for r in records:
        acc[r["problem_id"]].append(1.0 if r["correct"] else 0.0)
    return {k: float(np.mean(v)) for k, v in acc.items()}


def summarize(
    records: list[dict],
    timings: list[dict],
    baseline: str = "cot",
    baselines: Optional[dict[tuple[str, str], Optional[str]]] = None,
) -> list[Summary]:
    """One Summary per (dataset, method) of the records. Each method is compared with `baseline`
    on the problems both answered, or, given `baselines`, with the row it names for (dataset, method)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["dataset"], r["method"])].append(r)
    time_of: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for t in timings:
        spent = time_of[(t["dataset"], t["method"])]
        spent[0] += t["seconds"]
        spent[1] += t["tokens"]
    out = []
    for (dataset, method), recs in sorted(groups.items()):
        pp = per_problem(recs)
        vals = np.array(list(pp.values()))
        samples = max(1, round(len(recs) / max(len(pp), 1)))
        acc = float(vals.mean())
        if samples == 1:
            lo, hi = wilson(int(vals.sum()), len(vals))
        else:
            half = 1.96 * float(vals.std(ddof=1)) / math.sqrt(len(vals)) if len(vals) > 1 else 0.0
            lo, hi = max(0.0, acc - half), min(1.0, acc + half)
        toks = np.array([r["num_tokens"] for r in recs], dtype=float)
        ok = np.array([bool(r["correct"]) for r in recs])
        soft = sum(r["num_soft_steps"] for r in recs)
        secs, ttoks = time_of.get((dataset, method), (0.0, 0.0))
        s = Summary(
            dataset,
            method,
            len(pp),
            samples,
            acc,
            lo,
            hi,
            float(toks.mean()),
            float(toks[ok].mean()) if ok.any() else None,
            float(toks[~ok].mean()) if (~ok).any() else None,
            float(toks.sum() / ok.sum()) if ok.any() else None,
            soft / max(toks.sum(), 1),
            secs or None,
            (ttoks / secs) if secs else None,
        )
        s.truncated = sum(r.get("finish_reason") == "length" for r in recs) / len(recs)
        closed = [r["think_end"] for r in recs if r.get("think_end") is not None]
        s.no_think_end = (len(closed) - sum(closed)) / len(closed) if closed else None
        s.max_tokens = int(toks.max())
        forms = [boxed_form(r["text"]) for r in recs if "text" in r]
        if forms:
            s.boxed = sum(f != "none" for f in forms) / len(forms)
            s.malformed_boxed = forms.count("malformed") / len(forms)
        against = baselines.get((dataset, method)) if baselines is not None else baseline
        base = groups.get((dataset, against)) if against is not None and against != method else None
        if base is not None:
            bp = per_problem(base)
            shared = sorted(set(pp) & set(bp))
            s.baseline, s.paired = against, len(shared)
            diffs = np.array([pp[k] - bp[k] for k in shared])
            s.delta_vs_cot = float(diffs.mean()) if len(diffs) else None
            if shared and samples == 1:
                b = int(sum(1 for k in shared if pp[k] > bp[k]))
                c = int(sum(1 for k in shared if pp[k] < bp[k]))
                s.p_vs_cot, s.test_vs_cot = mcnemar_exact(b, c), f"McNemar b={b} c={c}"
            elif shared:
                s.p_vs_cot, s.test_vs_cot = paired_bootstrap(diffs), "paired bootstrap"
        s.sampled = sampled_metrics(by_problem(recs), samples) or None
        out.append(s)
    for dataset in {s.dataset for s in out}:  # Holm across each dataset's comparisons with cot
        rows = [s for s in out if s.dataset == dataset]
        for s, p in zip(rows, holm([s.p_vs_cot for s in rows])):
            s.p_holm = p
    return out
