"""Metrics over several samples per problem and over several comparisons: pass@k (the unbiased
estimator of Chen et al. 2021), maj@k (majority vote over answers grouped by math-verify
equivalence) and Holm's step-down correction of a report's p-values against cot."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Optional


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n, c of them right, is right):
    1 - C(n-c, k) / C(n, k), as a stable product (Chen et al. 2021, eq. 1)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def ks_for(samples: int) -> list[int]:
    """The k reported for `samples` samples per problem: 1, 2, 4, ... up to `samples`, and `samples`."""
    ks = [k for k in (2**i for i in range(samples.bit_length())) if k <= samples]
    return ks + ([samples] if ks[-1] != samples else [])


@lru_cache(maxsize=65536)
def _equivalent(a: str, b: str) -> bool:
    if a == b:
        return True
    if len(a) == 1 and a.isalpha() or len(b) == 1 and b.isalpha():
        return False  # choice letters are equal or different, never "equivalent"
    from math_verify import parse, verify

    try:
        pa, pb = parse(f"${a}$"), parse(f"${b}$")
        return bool(pa) and bool(pb) and bool(verify(pa, pb))
    except Exception:  # math-verify raises on pathological input: not the same answer
        return False


def majority(
    preds: Sequence[Optional[str]], correct: Sequence[bool], same: Callable[[str, str], bool] = _equivalent
) -> bool:
    """Whether the majority answer of one problem's samples is right. Answers are grouped by
    `same` (math-verify equivalence); unanswered samples do not vote; a tie goes to the group whose
    first answer came first. No answer at all is wrong."""
    groups: list[list[int]] = []  # sample indices, grouped by answer
    for i, p in enumerate(preds):
        if p is None:
            continue
        for g in groups:
            if same(preds[g[0]], p):  # type: ignore[arg-type]
                g.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return False
    best = max(groups, key=lambda g: (len(g), -g[0]))
    return any(correct[i] for i in best)


def holm(pvalues: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm's step-down adjusted p-values (family-wise error) of the given ones; None stays None."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])  # type: ignore[arg-type, return-value]
    m, out, running = len(idx), list(pvalues), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))  # type: ignore[operator]
        out[i] = running
    return out


def sampled_metrics(by_problem: dict[str, list[dict]], samples: int) -> dict[str, tuple[float, float, float]]:
    """{"pass@k": (mean, low, high), ..., "maj@N": ...} over problems with `samples` samples each
    (records ordered by sample), with a normal 95% interval over problems."""
    full = [sorted(recs, key=lambda r: r.get("sample", 0)) for recs in by_problem.values() if len(recs) >= samples]
    if not full or samples < 2:
        return {}
    out = {}
    for k in ks_for(samples):
        out[f"pass@{k}"] = _mean_ci(
            [pass_at_k(samples, sum(bool(r["correct"]) for r in rs[:samples]), k) for rs in full]
        )
    votes = [majority([r.get("pred") for r in rs[:samples]], [bool(r["correct"]) for r in rs[:samples]]) for rs in full]
    out[f"maj@{samples}"] = _mean_ci([float(v) for v in votes])
    return out


def _mean_ci(vals: list[float]) -> tuple[float, float, float]:
    n = len(vals)
    mean = sum(vals) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)
