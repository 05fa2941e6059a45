"""Issue 28 on the transformers engine, eager and compiled: the thinking fixture (tests/thinking.py)
made unsure at the step that writes </think>. Every soft method feeds E(</think>) after it and
plain tokens from then on; a Qwen3 prompt with thinking off gets no soft input; SwiR's switch
budget ends a thinking row. (llama.cpp: tests/test_thinking_llamacpp.py; vLLM:
tests/test_vllm_thinking.py.)"""

from __future__ import annotations

import pytest
from thinking import (
    SOFT_METHODS,
    check_closed_think_prompt_has_no_soft_input,
    check_swir_budget_ends_the_row,
    check_think_end_is_fed_plainly,
    thinking_model,
)


@pytest.fixture(scope="module", params=["eager", "compiled"])
def model(request):
    return thinking_model(uncertain_end=True, compile="off" if request.param == "eager" else "on")


@pytest.mark.parametrize("method", SOFT_METHODS)
def test_an_uncertain_think_end_is_fed_as_the_token(model, method):
    check_think_end_is_fed_plainly(model, method)


@pytest.mark.parametrize("method", SOFT_METHODS)
def test_thinking_off_feeds_no_soft_input(model, method):
    check_closed_think_prompt_has_no_soft_input(model, method)


def test_swir_budget_ends_a_thinking_row(model):
    check_swir_budget_ends_the_row(model)
