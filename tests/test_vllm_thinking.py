"""Issue 28 on the vLLM engine: the thinking fixture (tests/thinking.py, unsure at the step that
writes </think>) served by vLLM with selar's plugin. Every soft method the plugin feeds (SwiR's
dense inputs included) feeds the token </think> after that step (no pending mixture: vLLM embeds
the token itself; the fed vector is checked in tests/test_scope.py on the plugin's state) and plain
tokens from then on, with the transformers engine's tokens and soft steps; a Qwen3 prompt with
thinking off gets no soft input. Methods (and SwiR's max_switch_count) it cannot run are refused
in one sentence. Sampled rows are compared too, seeded, token for token."""

from __future__ import annotations

import importlib.util
import os
import warnings

import pytest

WHY = "vLLM is not installed here (README, 'vLLM engine': the .venv-vllm environment)"
if importlib.util.find_spec("vllm") is None:
    warnings.warn(f"the vLLM engine's tests are SKIPPED: {WHY}", stacklevel=1)
    pytest.skip(WHY, allow_module_level=True)

from thinking import METHOD_OPTIONS, QUESTIONS, SOFT_METHODS, chat, qwen3_tokenizer, tiny_qwen3  # noqa: E402

import selar  # noqa: E402
from selar.engines.base import missing_kinds  # noqa: E402
from selar.errors import CapabilityError  # noqa: E402
from selar.methods import METHODS  # noqa: E402

PLUGIN_METHODS = [m for m in SOFT_METHODS if not missing_kinds("vllm", m)]  # the rest are refused


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(the fixture on the transformers engine, the same folder on vLLM)."""
    folder = tmp_path_factory.mktemp("tiny-qwen3")
    tok = qwen3_tokenizer()
    hf = tiny_qwen3(tok, uncertain_end=True, head_dim=32)
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    ref = selar.wrap(hf, tok, name="tiny-qwen3", compile="off")
    old = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    try:
        vl = selar.load_model(str(folder), engine="vllm", dtype="float32", max_num_seqs=2, max_model_len=256,
                              enforce_eager=True)  # fmt: skip
    finally:
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE") if old is None else os.environ.__setitem__(
            "VLLM_CPU_KVCACHE_SPACE", old
        )
    yield ref, vl
    vl.close()


@pytest.mark.parametrize("method", PLUGIN_METHODS)
def test_an_uncertain_think_end_is_fed_as_the_token(models, method):
    ref, vl = models
    ids = [chat(ref, QUESTIONS[0], True)]
    kw = dict(prompt_token_ids=ids, temperature=0, max_new_tokens=24, trace=True, **METHOD_OPTIONS.get(method, {}))
    (want,) = selar.generate(ref, QUESTIONS[:1], method, **kw)
    (got,) = selar.generate(vl, QUESTIONS[:1], method, **kw)
    assert got.token_ids == want.token_ids  # margins of 0.4 logits and more: float32 decides every step
    soft = [t["soft"] for t in got.trace]
    assert soft == [t["soft"] for t in want.trace]
    e = got.token_ids.index(vl.think_end)
    assert any(soft[:e]) and not any(soft[e:]), soft
    assert got.trace[e]["entropy"] > 0.9 or method != "selar"  # the </think> step is unsure


@pytest.mark.parametrize("method", PLUGIN_METHODS)
def test_thinking_off_feeds_no_soft_input(models, method):
    ref, vl = models
    ids = [chat(ref, q, False) for q in QUESTIONS]
    got = selar.generate(vl, QUESTIONS, method, prompt_token_ids=ids, temperature=0, max_new_tokens=12)
    assert all(r.token_ids and r.num_soft_steps == 0 for r in got)


@pytest.mark.parametrize("method", [m for m in METHODS if missing_kinds("vllm", m)])
def test_methods_the_plugin_cannot_feed_are_refused_in_one_sentence(models, method):
    with pytest.raises(CapabilityError, match="which the vllm engine cannot feed"):
        selar.generate(models[1], QUESTIONS[:1], method, max_new_tokens=4)


def test_swir_max_switch_count_is_refused_in_one_sentence(models):
    with pytest.raises(CapabilityError, match="max_switch_count is not supported on the vLLM engine"):
        selar.generate(models[1], QUESTIONS[:1], "swir", max_switch_count=1, max_new_tokens=4)


@pytest.mark.parametrize("method", PLUGIN_METHODS)
def test_sampled_rows_equal_the_transformers_engines(models, method):
    """Sampled, seeded rows (temperature 0.8; each question with three seeds, rows joining vLLM's
    batch of 2 as others finish): selar draws each token from per-row seeded generators on vLLM as on
    the transformers engine (Gumbel Soft Thinking's and Multiplex's tokens come from the method's own
    noise), and the fixture's margins leave no draw to float32's last bits, so the rows are equal token
    for token, soft steps included; the seeds give different rows. (The mixtures' weights are not
    compared here: vLLM does not report its fed inputs.)"""
    ref, vl = models
    questions = [q for q in QUESTIONS for _ in range(3)]
    kw = dict(prompt_token_ids=[chat(ref, q, True) for q in questions], temperature=0.8, top_p=1.0, top_k=0,
              max_new_tokens=24, trace=True, seeds=[3, 4, 5, 6, 7, 8])  # fmt: skip
    kw.update(METHOD_OPTIONS.get(method, {}))
    want = selar.generate(ref, questions, method, **kw)
    got = selar.generate(vl, questions, method, **kw)
    for w, g in zip(want, got):
        assert g.token_ids == w.token_ids
        assert [t["soft"] for t in g.trace] == [t["soft"] for t in w.trace]
    assert any(r.num_soft_steps for r in want)
    assert len({tuple(r.token_ids) for r in want}) > 1  # the draws matter: the seeds give different rows
