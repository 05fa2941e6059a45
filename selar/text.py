"""Text from token ids: stop strings and incremental detokenisation (streaming), in one place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import stop_checker

__all__ = ["Detokenizer", "cut_at_stop", "held_back", "stop_checker"]


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string (text a
    stream must hold back, since the next token may complete the stop string)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class Detokenizer:
    """The text of a growing list of token ids, handed out incrementally: `add(ids)` returns the
    text that is new since the last call. An incomplete UTF-8 sequence (a character split over
    tokens) waits for its next token; text after a stop string is never handed out, and a tail
    that may begin one is held back until it is decided (`final=True` releases everything)."""

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()):
        self.tokenizer, self.stops = tokenizer, tuple(stops)
        self.ids: list[int] = []
        self.sent = ""

    def text(self) -> str:
        """The whole text so far, cut at the first stop string."""
        return cut_at_stop(self.tokenizer.decode(self.ids, skip_special_tokens=True), self.stops)

    def add(self, ids: Sequence[int], final: bool = False) -> str:
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") and not final:
            return ""
        text = cut_at_stop(text, self.stops)
        if not final:
            text = text[: len(text) - held_back(text, self.stops)]
        if len(text) <= len(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta
