"""The official evaluation protocol, in one place: the prompt, the method options each dataset
runs with by default (the paper's per-dataset tau), the token limits and the answer guard.

Datasets say what a problem is (`datasets.py`); this module says how a method is run on it.
`resolve_options` applies, in order: the paper's per-dataset options (where the method has that
option), the token limit (long for thinking models), the answer guard (non-thinking models on
step-wise engines), then the user's `--set`. run.json records the result per dataset and method.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from ..methods import get_method_spec, option_names

# Bump when a default below changes what a run produces: run directories made under another
# version are refused on --resume (their results would mix two protocols).
VERSION = "2"

# The official runs' suffix, verbatim (ungrammatical, but it is what the published numbers used).
PROMPT_SUFFIX = "Please reason step by step, and make sure put your final answer within \\boxed{}."
PROMPT_TEMPLATE = "{question}\n" + PROMPT_SUFFIX

# GPQA in the paper's fixed multiple-choice format: question, choices labelled A-D, instruction.
GPQA_INSTRUCTION = "Answer with the letter of the correct choice: \\boxed{A}, \\boxed{B}, \\boxed{C} or \\boxed{D}."

# The paper's per-dataset SeLaR threshold (official README). The authors' stored runs used other
# values for some sets (GSM8K 0.6; GPQA 0.5 with k 5 for Qwen3-8B; AIME25 0.6 for Qwen3-32B).
PAPER_OPTIONS: dict[str, dict[str, object]] = {
    "gsm8k": {"tau": 0.5},
    "math500": {"tau": 0.5},
    "gpqa": {"tau": 0.7},
    "aime2024": {"tau": 0.4},
    "aime2025": {"tau": 0.5},
}

# Token limits of the official runs, for thinking models (`</think>` in the vocabulary).
THINKING_MAX_NEW_TOKENS = 32768
THINKING_MAX_NEW_TOKENS_BY_DATASET = {"aime2024": 38912, "aime2025": 38912}
# Non-thinking models answer in hundreds of tokens: the sampling default.
PLAIN_MAX_NEW_TOKENS = 1024

# Non-thinking models: soft inputs until the row writes an answer marker, plain tokens after
# (`soft_scope=guarded`); `--set soft_scope=all` keeps soft inputs through the answer.
GUARDED_SCOPE = "guarded"


def render_prompt(question: str, template: Optional[str] = None) -> str:
    """The user message of one problem (`template` holds `{question}`; default the official one)."""
    return (template or PROMPT_TEMPLATE).replace("{question}", question)


def gpqa_question(question: str, choices: list[str]) -> str:
    """A GPQA question in the paper's format: the question, its choices labelled A-D, and the
    instruction to answer with a boxed letter."""
    lines = "\n".join(f"{letter}) {choice}" for letter, choice in zip("ABCD", choices))
    return f"{question}\n\n{lines}\n\n{GPQA_INSTRUCTION}"


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def max_new_tokens(dataset: str, thinking: bool) -> int:
    if not thinking:
        return PLAIN_MAX_NEW_TOKENS
    return THINKING_MAX_NEW_TOKENS_BY_DATASET.get(dataset, THINKING_MAX_NEW_TOKENS)


def model_facts(model: Any) -> dict:
    """What the protocol's defaults depend on in a loaded model: whether it thinks, and whether its
    engine can run the answer guard (`selar eval` and lm-eval's `selar` model both ask here)."""
    return {"thinking": model.is_thinking, "guard": model.capabilities.answer_guard}


def defaults(dataset: str, method: str, *, thinking: bool = False, guard: bool = True) -> dict:
    """The protocol's options of `method` on `dataset` before the user's --set: the paper's
    per-dataset options the method has, the token limit, and the answer guard on non-thinking
    models (`guard`: the engine can run the answer guard)."""
    names = option_names(method)
    opts = {k: v for k, v in PAPER_OPTIONS.get(dataset, {}).items() if k in names}
    opts["max_new_tokens"] = max_new_tokens(dataset, thinking)
    if guard and not thinking and get_method_spec(method).inputs != frozenset({"token"}):
        opts["soft_scope"] = GUARDED_SCOPE
    return opts
