"""Paired comparison of two runs of the same problems (e.g. one setting against another under the
same method name): accuracy with McNemar's exact test on the problems both answered, mean tokens,
soft-step share, and the share of boxed / malformed boxed answers.

    python -m selar.eval.compare runs/guard/guarded runs/guard/all --names guard,no-guard
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .grading import boxed_form
from .metrics import mcnemar_exact, wilson
from .rundir import read_results


def load(run: str) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    p = Path(run)
    files = sorted(p.glob("results*.jsonl")) if p.is_dir() else [p]
    return {(r["dataset"], r["problem_id"], r["method"], r["sample"]): r for f in files for r in read_results(f)}


def compare(a: dict, b: dict) -> dict[str, Any]:
    """Figures of two runs over the (dataset, problem, method, sample) keys they share."""
    keys = sorted(set(a) & set(b))
    out: dict[str, Any] = {"n": len(keys)}
    for name, run in (("a", a), ("b", b)):
        recs = [run[k] for k in keys]
        k = sum(bool(r["correct"]) for r in recs)
        forms = [boxed_form(r["text"]) for r in recs]
        toks = sum(r["num_tokens"] for r in recs)
        out[name] = {
            "correct": k,
            "accuracy": k / max(len(recs), 1),
            "ci": wilson(k, len(recs)),
            "boxed": sum(f != "none" for f in forms),
            "malformed": forms.count("malformed"),
            "tokens": toks / max(len(recs), 1),
            "soft_share": sum(r["num_soft_steps"] for r in recs) / max(toks, 1),
        }
    only_a = sum(bool(a[k]["correct"]) and not b[k]["correct"] for k in keys)
    only_b = sum(bool(b[k]["correct"]) and not a[k]["correct"] for k in keys)
    out["only_a"], out["only_b"], out["p"] = only_a, only_b, mcnemar_exact(only_a, only_b)
    return out


def format_comparison(c: dict[str, Any], names: tuple[str, str] = ("a", "b")) -> str:
    n = c["n"]
    lines = [
        f"{n} paired generations",
        "| run | accuracy % [95% CI] | boxed % | malformed boxed % | mean tokens | soft % |",
        "|---|---|---|---|---|---|",
    ]
    for key, name in zip(("a", "b"), names):
        s = c[key]
        lo, hi = s["ci"]
        lines.append(
            f"| {name} | {s['accuracy'] * 100:.1f} [{lo * 100:.1f}, {hi * 100:.1f}] "
            f"| {s['boxed'] / max(n, 1) * 100:.1f} ({s['boxed']}) "
            f"| {s['malformed'] / max(n, 1) * 100:.1f} ({s['malformed']}) | {s['tokens']:.0f} "
            f"| {s['soft_share'] * 100:.1f} |"
        )
    lines.append(
        f"McNemar (exact, two-sided): right only with {names[0]} {c['only_a']}, only with {names[1]} "
        f"{c['only_b']}, p = {c['p']:.3g}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--names", default="a,b", help="names of the two runs, comma-separated")
    args = ap.parse_args(argv)
    first, _, second = args.names.partition(",")
    print(format_comparison(compare(load(args.a), load(args.b)), (first, second or "b")))


if __name__ == "__main__":
    main()
