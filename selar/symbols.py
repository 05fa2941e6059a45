"""The "math symbol" tokens that the SeLaR and SwiR reference code never make soft:
digits, single letters, operators and LaTeX commands."""

from __future__ import annotations

import re

import torch

_OPS = set("+-*/=^_<>()[]{}|!%.,:;\\$&~'")
_LATEX = re.compile(r"^\\[A-Za-z]+$")


def is_math_symbol(text: str) -> bool:
    s = text.strip()
    if not s:
        return False
    if s.isdigit():
        return True
    if len(s) == 1 and s.isascii() and s.isalpha():
        return True
    if all(c in _OPS for c in s):
        return True
    return bool(_LATEX.match(s))


def symbol_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) bool, computed once per tokenizer and cached on it."""
    cached = getattr(tokenizer, "_selar_symbol_mask", None)
    if cached is not None and cached.shape[0] == vocab_size:
        return cached
    n = min(vocab_size, len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in range(n)])
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[:n] = torch.tensor([is_math_symbol(t) for t in texts], dtype=torch.bool)
    try:
        tokenizer._selar_symbol_mask = mask
    except AttributeError:  # pragma: no cover - exotic tokenizer objects
        pass
    return mask
