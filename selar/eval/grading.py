"""Grading: math-verify on the text after the last </think>; GPQA by choice letter."""

from __future__ import annotations

import re

_LETTER_PATTERNS = [
    re.compile(r"\\boxed\{\s*\(?([ABCD])\)?\s*\}"),
    re.compile(r"(?:answer|choice|option)\s*(?:is|:)?\s*\(?\**\s*([ABCD])\b\)?", re.IGNORECASE),
    re.compile(r"\(([ABCD])\)"),
]


def final_text(text: str) -> str:
    return text.rpartition("</think>")[2]


def choice_letter(text: str) -> str | None:
    """The last choice letter the answer commits to (a boxed letter first)."""
    for rx in _LETTER_PATTERNS:
        found = rx.findall(text)
        if found:
            return found[-1].upper()
    return None


def grade(text: str, gold: str, kind: str = "math") -> tuple[bool, str | None]:
    """(correct, extracted prediction) for a generated text."""
    answer = final_text(text)
    if kind == "choice":
        letter = choice_letter(answer)
        return letter == gold.strip().upper(), letter
    from math_verify import parse, verify

    gold_s = gold if "$" in gold or "\\boxed" in gold else f"${gold}$"
    try:
        g, p = parse(gold_s), parse(answer)
        ok = bool(p) and bool(verify(g, p))
    except Exception:  # math-verify raises on pathological input; count it as wrong
        return False, None
    return ok, (str(p[-1]) if p else None)
