"""Issue 28 on the llama.cpp engine: the thinking fixture (tests/thinking.py, unsure at the step
that writes </think>) as a float32 GGUF (tests/tiny_gguf.py). Every soft method feeds E(</think>)
after it and plain tokens from then on; a Qwen3 prompt with thinking off gets no soft input;
SwiR's switch budget ends a thinking row. The same checks as tests/test_thinking_engines.py."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp", reason="the llama.cpp engine needs llama-cpp-python (pip install 'selar[llamacpp]')")

from thinking import (  # noqa: E402
    SOFT_METHODS,
    check_closed_think_prompt_has_no_soft_input,
    check_swir_budget_ends_the_row,
    check_think_end_is_fed_plainly,
    qwen3_tokenizer,
    tiny_qwen3,
)
from tiny_gguf import write_gguf  # noqa: E402

from selar.engines.llamacpp import LlamaCppModel  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tok = qwen3_tokenizer()
    path = write_gguf(tiny_qwen3(tok, uncertain_end=True), tok, tmp_path_factory.mktemp("qwen3") / "q.gguf", "qwen3")
    m = LlamaCppModel(path, tok, name="tiny-qwen3", source="gguf", max_rows=2, context=512, kv_type="f32", threads=1,
                      flash_attn=False)  # fmt: skip
    yield m
    m.close()


@pytest.mark.parametrize("method", SOFT_METHODS)
def test_an_uncertain_think_end_is_fed_as_the_token(model, method):
    check_think_end_is_fed_plainly(model, method)


@pytest.mark.parametrize("method", SOFT_METHODS)
def test_thinking_off_feeds_no_soft_input(model, method):
    check_closed_think_prompt_has_no_soft_input(model, method)


def test_swir_budget_ends_a_thinking_row(model):
    check_swir_budget_ends_the_row(model)
