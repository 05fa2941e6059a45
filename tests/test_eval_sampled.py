"""pass@k, maj@k and Holm's correction against hand-made cases and their closed forms, and in the
report of a run with several samples per problem."""

from __future__ import annotations

import json
from itertools import combinations
from math import comb

import pytest
from click.testing import CliRunner

from selar.cli import main
from selar.eval.sampled import holm, ks_for, majority, pass_at_k


@pytest.mark.parametrize("n,c", [(1, 0), (1, 1), (4, 1), (8, 3), (10, 0), (10, 10), (20, 7)])
def test_pass_at_k_is_the_closed_form_and_the_enumeration(n, c):
    for k in range(1, n + 1):
        closed = 1 - comb(n - c, k) / comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12)
        if n <= 10:  # the definition: the share of k-subsets holding at least one right sample
            right = set(range(c))
            hits = [bool(right & set(s)) for s in combinations(range(n), k)]
            assert pass_at_k(n, c, k) == pytest.approx(sum(hits) / len(hits), abs=1e-12)
    assert pass_at_k(n, c, 1) == pytest.approx(c / n)
    with pytest.raises(ValueError):
        pass_at_k(n, c, n + 1)


def test_ks_reported():
    assert ks_for(1) == [1] and ks_for(8) == [1, 2, 4, 8] and ks_for(6) == [1, 2, 4, 6]


def test_majority_groups_equivalent_answers():
    # 1/2 and 0.5 are one answer (math-verify), outvoting 3 and 3? no: 2 votes each, the first group wins
    assert majority(["\\frac{1}{2}", "3", "0.5", "3"], [True, False, True, False]) is True
    assert majority(["3", "\\frac{1}{2}", "0.5", "3"], [False, True, True, False]) is False
    assert majority(["3", "0.5", "\\frac{1}{2}", "1/2"], [False, True, True, True]) is True
    assert majority([None, None, "7"], [False, False, True]) is True  # unanswered samples do not vote
    assert majority([None, None], [False, False]) is False
    assert majority(["B", "C", "C"], [True, False, False]) is False  # letters: equal or not
    assert majority(["x+1", "1+x", "2"], [True, True, False]) is True


def test_holm_textbook_example():
    # Holm (1979) procedure by hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, made monotone
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.9]) == pytest.approx([1.0, None, 1.0])
    assert holm([0.02]) == [0.02] and holm([]) == []


def test_report_with_samples_shows_pass_at_k_and_majority(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # 3 problems x 4 samples; selar right on p0 in samples 1 and 2, p1 always, p2 never;
    # cot right on p0 only in sample 0
    right = {"selar": [[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], "cot": [[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]}
    with open(run / "results.jsonl", "w") as f:
        for method, probs in right.items():
            for i, oks in enumerate(probs):
                for s, ok in enumerate(oks):
                    rec = {
                        "dataset": "gsm8k",
                        "problem_id": f"p{i}",
                        "method": method,
                        "sample": s,
                        "correct": bool(ok),
                    }
                    rec.update(pred="1" if ok else str(10 + s % 2), gold="1", num_tokens=10, num_soft_steps=0)
                    rec.update(finish_reason="stop", text="t")
                    f.write(json.dumps(rec) + "\n")
    res = CliRunner().invoke(main, ["report", str(run), "--out", str(tmp_path / "rep"), "--no-plots"])
    assert res.exit_code == 0, res.output
    rows = {s["method"]: s for s in json.loads((tmp_path / "rep" / "report.json").read_text())}
    sel = rows["selar"]["sampled"]
    assert sel["pass@1"][0] == pytest.approx((2 / 4 + 1 + 0) / 3)
    assert sel["pass@2"][0] == pytest.approx((pass_at_k(4, 2, 2) + 1 + 0) / 3)
    assert sel["pass@4"][0] == pytest.approx(2 / 3)
    # wrong answers are 10 (even samples) or 11 (odd). maj@4: p0 has 10, 1, 1, 11: right; p1 right;
    # p2 has 10, 11, 10, 11: wrong
    assert sel["maj@4"][0] == pytest.approx(2 / 3)
    assert rows["cot"]["sampled"]["maj@4"][0] == pytest.approx(1 / 3)  # p0: 1, 11, 10, 11: 11 wins
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## pass@k and majority vote" in md and "| maj@4 |" in md and "Holm-corrected" in md


def test_budget_curve_counts_a_right_answer_only_within_its_budget(tmp_path):
    from selar.eval.budget import budget_curves, budgets_for

    assert budgets_for(300) == [64, 128, 256, 300] and budgets_for(64) == [64]
    recs = [
        {"dataset": "gsm8k", "method": "cot", "correct": ok, "num_tokens": n}
        for ok, n in [(True, 50), (True, 200), (False, 100), (True, 300)]
    ]
    assert budget_curves(recs, [64, 128, 256, 300]) == {("gsm8k", "cot"): [0.25, 0.25, 0.5, 0.75]}


def test_ranking_orders_methods_by_accuracy_with_holm_p_values(tmp_path):
    from selar.eval.metrics import mcnemar_exact
    from selar.eval.sampled import holm as holm_fn

    run = tmp_path / "run"
    run.mkdir()
    right = {"cot": [1, 0, 0, 0, 1, 0], "selar": [1, 1, 1, 1, 1, 0], "swir": [1, 1, 0, 0, 1, 0]}
    with open(run / "results.jsonl", "w") as f:
        for method, oks in right.items():
            for i, ok in enumerate(oks):
                rec = {"dataset": "gsm8k", "problem_id": f"p{i}", "method": method, "sample": 0, "correct": bool(ok)}
                rec.update(pred="1", gold="1", num_tokens=10, num_soft_steps=0, finish_reason="stop", text="t")
                f.write(json.dumps(rec) + "\n")
    res = CliRunner().invoke(main, ["report", str(run), "--out", str(tmp_path / "rep"), "--no-plots"])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    ranked = [
        line.split(" | ")[1]
        for line in md.split("## Ranking")[1].splitlines()
        if line.startswith("| ") and "rank" not in line
    ]
    assert ranked[:3] == ["selar", "swir", "cot"]
    p_selar, p_swir = mcnemar_exact(3, 0), mcnemar_exact(1, 0)
    adj = holm_fn([p_selar, p_swir])
    assert f"+50.0, p={adj[0]:.3f}" in md and f"+16.7, p={adj[1]:.3f}" in md


def test_arena_preset_is_every_training_free_soft_method_and_runs(tmp_path):
    from conftest import make_model, make_tokenizer

    from selar.eval.config import METHOD_PRESETS, expand_methods
    from selar.methods import METHODS

    arena = METHOD_PRESETS["arena"]
    soft = {
        n
        for n, s in METHODS.items()
        if s.inputs & {"sparse", "dense"} and not s.preset.keys() & {"gate", "push_weight"}
    }
    assert set(arena) == soft | {"cot"}, "a new soft method joins the arena preset (selar/eval/config.py)"
    assert expand_methods(["cot", "arena", "selar-no-gate"]) == [*arena, "selar-no-gate"]
    tok = make_tokenizer()
    make_model(tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "What is 1 + 1?", "answer": "2", "id": "q0"}) + "\n")
    args = ["eval", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "q.jsonl"), "--methods", "arena"]
    res = CliRunner().invoke(main, [*args, "-n", "4", "--dtype", "float32", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    done = {json.loads(line)["method"] for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()}
    assert done == set(arena)
