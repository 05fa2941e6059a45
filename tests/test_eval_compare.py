"""`python -m selar.eval.compare`: two runs of the same problems, paired."""

from __future__ import annotations

import json
import random

from selar.eval.compare import compare, format_comparison, load, main
from selar.eval.metrics import mcnemar_exact


def write(path, recs):
    path.mkdir(parents=True)
    with open(path / "results.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")


def test_paired_figures_against_a_direct_count(tmp_path, capsys):
    rng = random.Random(0)
    texts = ["so \\boxed{3}", "\\boxedboxed{3}", "it is 3", "\\boxed{3"]
    a, b = [], []
    for i in range(40):
        base = {"dataset": "gsm8k", "problem_id": str(i), "method": "selar", "sample": 0}
        a.append(
            {**base, "correct": rng.random() < 0.6, "text": rng.choice(texts), "num_tokens": 10, "num_soft_steps": 2}
        )
        b.append(
            {**base, "correct": rng.random() < 0.4, "text": rng.choice(texts), "num_tokens": 20, "num_soft_steps": 1}
        )
    b.append({**b[0], "problem_id": "only-in-b"})
    write(tmp_path / "a", a)
    write(tmp_path / "b", b)
    c = compare(load(str(tmp_path / "a")), load(str(tmp_path / "b")))
    assert c["n"] == 40
    only_a = sum(x["correct"] and not y["correct"] for x, y in zip(a, b))
    only_b = sum(y["correct"] and not x["correct"] for x, y in zip(a, b))
    assert (c["only_a"], c["only_b"]) == (only_a, only_b)
    assert c["p"] == mcnemar_exact(only_a, only_b)
    assert c["a"]["correct"] == sum(x["correct"] for x in a)
    assert c["a"]["malformed"] == sum(x["text"] in texts[1::2] for x in a)
    assert c["b"]["boxed"] == sum(x["text"] != "it is 3" for x in b[:40])
    assert c["a"]["soft_share"] == 0.2 and c["b"]["tokens"] == 20
    assert f"p = {c['p']:.3g}" in format_comparison(c, ("guard", "no-guard"))
    main([str(tmp_path / "a"), str(tmp_path / "b"), "--names", "guard,no-guard"])
    assert "| guard |" in capsys.readouterr().out
