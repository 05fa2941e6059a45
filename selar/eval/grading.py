"""Grading: math-verify on the text after the last </think>; GPQA by a strict boxed-letter rule.

Math: the gold is LaTeX or a plain number, read as math unless it holds its own (unescaped) `$`
delimiters or a `\\boxed{}`; an escaped dollar (`\\$18.90`) is part of the math. A gold that
parses to nothing raises `GradingError`: it would mark every answer wrong.

Choice (GPQA): every `\\boxed{...}` of the answer that names a letter (`\\boxed{C}`, `\\boxed{(C)}`,
`\\boxed{\\text{C}}`, `\\boxed{\\mathrm{B}}`, `\\boxed{C) 0.64}`) must name the same one; several
different letters are wrong. With no boxed letter, an explicit "answer is C" or "(C)" counts,
upper-case letters only ("the answer is a mixture" is no answer). A generation cut off inside its
reasoning has no answer: a letter it mentions mid-thought gets no credit.
"""

from __future__ import annotations

import re
from typing import Optional

from ..errors import SelarError

LETTERS = "ABCD"
_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mathit|textit|operatorname)\s*\{([^{}]*)\}")
_BOXED_LETTER = re.compile(r"^\(?\s*([ABCD])\s*\)?(?:$|[\s.:,)])")
_FALLBACK = [
    re.compile(r"(?i:answer|choice|option)\s*(?i:is|:)?\s*\(?\**\s*([ABCD])\b\)?"),
    re.compile(r"\(([ABCD])\)"),
]
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


class GradingError(SelarError, ValueError):
    """A gold answer that cannot be graded against (it parses to nothing)."""


def final_text(text: str) -> str:
    return text.rpartition("</think>")[2]


def cut_in_reasoning(text: str) -> bool:
    """The text opened a reasoning block (`<think>`) and never closed it."""
    return "<think>" in text and "</think>" not in text.rpartition("<think>")[2]


def boxed_contents(text: str) -> list[str]:
    """The contents of every `\\boxed{...}` (balanced braces), in order; an unclosed one is skipped."""
    out = []
    for m in re.finditer(r"\\boxed\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def boxed_letter(content: str) -> Optional[str]:
    """The choice letter a boxed content names, if any: `C`, `(C)`, `\\text{C}`, `C) 0.64`, `C. text`."""
    prev = None
    while prev != content:  # unwrap \text{...}, \mathrm{...}, nested
        prev, content = content, _WRAPPERS.sub(r"\1", content)
    m = _BOXED_LETTER.match(content.strip())
    return m.group(1) if m else None


def choice_letter(text: str, reasoning_open: bool = False) -> Optional[str]:
    """The letter an answer commits to, or None (no letter, several boxed letters, or a
    generation cut off inside its reasoning: `reasoning_open`, or `<think>` never closed)."""
    if reasoning_open or cut_in_reasoning(text):
        return None
    letters = {x for x in (boxed_letter(c) for c in boxed_contents(text)) if x}
    if len(letters) > 1:
        return None
    if letters:
        return letters.pop()
    for rx in _FALLBACK:
        found = rx.findall(text)
        if found:
            return found[-1]
    return None


def boxed_form(text: str) -> str:
    """How an answer boxes its result: "none" (no `\\boxed`), "ok", or "malformed": a `\\boxed`
    not followed by `{` (e.g. `\\boxedboxed{72}`), an unclosed brace, or a last boxed content that
    is empty or parses to nothing."""
    from math_verify import parse

    answer = final_text(text)
    if "\\boxed" not in answer:
        return "none"
    if re.search(r"\\boxed(?!\s*\{)", answer):
        return "malformed"
    contents = boxed_contents(answer)
    if len(contents) < answer.count("\\boxed") or not contents[-1].strip():
        return "malformed"
    try:
        ok = bool(parse(f"${contents[-1]}$"))
    except Exception:
        ok = False
    return "ok" if ok else "malformed"


def gold_math(gold: str) -> str:
    """A gold answer as math-verify reads it: in `$...$` unless it has its own delimiters."""
    return gold if _UNESCAPED_DOLLAR.search(gold) or "\\boxed" in gold else f"${gold}$"


def parse_gold(gold: str):
    """The parsed gold answer; GradingError when it parses to nothing."""
    from math_verify import parse

    try:
        g = parse(gold_math(gold))
    except Exception as e:  # math-verify raises on pathological input
        raise GradingError(f"the gold answer {gold!r} cannot be parsed: {e}") from None
    if not g:
        raise GradingError(f"the gold answer {gold!r} parses to nothing, so every answer would be marked wrong")
    return g


def check_gold(gold: str, kind: str = "math") -> None:
    """Raise GradingError unless `gold` can be graded against."""
    if kind == "choice":
        if gold.strip() not in LETTERS:
            raise GradingError(f"a multiple-choice gold must be one of {', '.join(LETTERS)}, got {gold!r}")
        return
    parse_gold(gold)


def grade(text: str, gold: str, kind: str = "math", reasoning_open: bool = False) -> tuple[bool, Optional[str]]:
    """(correct, extracted prediction) for a generated text. `reasoning_open`: the generation was
    cut off inside its reasoning (a thinking model that never wrote </think>)."""
    if kind == "choice":
        check_gold(gold, kind)
        letter = choice_letter(final_text(text), reasoning_open)
        return letter == gold.strip(), letter
    from math_verify import parse, verify

    g = parse_gold(gold)
    try:
        p = parse(final_text(text))
        ok = bool(p) and bool(verify(g, p))
    except Exception:  # math-verify raises on pathological output; count it as wrong
        return False, None
    return ok, (str(p[-1]) if p else None)
