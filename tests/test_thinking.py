"""A Qwen3-like thinking model (tests/thinking.py: Qwen2.5's tokenizer with Qwen3's think tokens
at Qwen3's ids and Qwen3's `enable_thinking` chat template, on a tiny random Qwen3 arranged to
think) through generate, eval, serve and the soft-scope logic."""

from __future__ import annotations

import json

import pytest
from thinking import THINK_IDS, thinking_model

import selar

PROMPTS = ["What is 2 + 2?", "Is the sky blue?"]


@pytest.fixture(scope="module")
def qwen3():
    return thinking_model()


def encode(model, prompt, thinking):
    text = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=thinking
    )
    return model.tokenizer.encode(text, add_special_tokens=False)


def test_looks_like_qwen3(qwen3):
    tok = qwen3.tokenizer
    assert (qwen3.think_start, qwen3.think_end) == (151667, 151668)
    assert all(tok.convert_tokens_to_ids(t) == i for t, i in THINK_IDS.items())
    assert tok.decode([151667, 151668]) == "<think></think>"  # added, not special: kept in text
    assert tok.convert_tokens_to_ids("<|im_end|>") in qwen3.stop_ids
    on, off = encode(qwen3, PROMPTS[0], True), encode(qwen3, PROMPTS[0], False)
    assert tok.decode(on).endswith("<|im_start|>assistant\n")
    assert tok.decode(off).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert selar.format_prompt(qwen3, PROMPTS[0]) == on  # selar's prompts think


def test_thinking_on_opens_think_and_soft_steps_stay_inside(qwen3):
    res = selar.generate(qwen3, PROMPTS, "selar", temperature=0, max_new_tokens=40, tau=0.5, trace=True)
    for r in res:
        assert r.token_ids[0] == qwen3.think_start  # the model opens <think> itself
        end = r.token_ids.index(qwen3.think_end)
        assert r.num_soft_steps > 0 and r.finish_reason == "stop"
        assert not any(t["soft"] for t in r.trace[end:])  # soft_scope auto = reasoning: none after </think>
        assert r.reasoning and r.answer in ("yes", "no")
    # with soft_scope="all" the unsure answer step after </think> goes soft too
    every = selar.generate(
        qwen3, PROMPTS, "selar", temperature=0, max_new_tokens=40, tau=0.5, trace=True, soft_scope="all"
    )
    for r in every:
        end = r.token_ids.index(qwen3.think_end)
        assert any(t["soft"] for t in r.trace[end:])


def test_thinking_off_feeds_no_soft_inputs(qwen3):
    """An empty think block in the prompt closes the reasoning scope before the first step."""
    enc = [encode(qwen3, p, False) for p in PROMPTS]
    res = selar.generate(qwen3, PROMPTS, "selar", prompt_token_ids=enc, temperature=0, max_new_tokens=20, tau=0.5)
    for r in res:
        assert qwen3.think_start not in r.token_ids and r.num_soft_steps == 0
        assert r.text.strip() in ("yes", "no")
    every = selar.generate(
        qwen3, PROMPTS, "selar", prompt_token_ids=enc, temperature=0, max_new_tokens=20, tau=0.5, soft_scope="all"
    )
    assert all(r.num_soft_steps > 0 for r in every)  # the answer step is unsure: soft when allowed


def test_eval_on_the_thinking_model(qwen3, tmp_path):
    from selar.eval.config import EvalConfig
    from selar.eval.runner import run_eval

    data = tmp_path / "mini.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": q, "answer": a}) + "\n"
            for q, a in [("Is the sky blue?", "yes"), ("Is fire cold?", "no")]
        )
    )
    cfg = EvalConfig(
        model=qwen3.name,
        datasets=[],
        methods=["cot", "selar"],
        data=str(data),
        sets={"max_new_tokens": 40, "selar.tau": 0.5},
        batch_size=2,
    )
    path = run_eval(cfg, str(tmp_path / "run"), model=qwen3, progress=False)
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(recs) == 4 and all(r["think_end"] is True for r in recs)  # every row closed its reasoning
    for r in recs:
        assert r["text"].startswith("<think>") and r["num_tokens"] > 4
        answer = r["text"].rpartition("</think>")[2].strip()
        assert answer in ("yes", "no") and r["correct"] == (answer == r["gold"])
    assert any(r["num_soft_steps"] > 0 for r in recs if r["method"] == "selar")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["model"]["thinking"] is True


def test_server_reasoning_content(qwen3):
    openai = pytest.importorskip("openai")
    from selar.server import Settings, start_in_thread

    srv = start_in_thread(qwen3, Settings(model_name="tiny-qwen3", max_tokens=48, default_max_tokens=40), max_batch=2)
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        r = client.chat.completions.create(
            model="tiny-qwen3",
            messages=[{"role": "user", "content": PROMPTS[0]}],
            max_tokens=40,
            temperature=0,
            extra_body={"method": "selar", "tau": 0.5},
        )
        msg = r.choices[0].message
        want = selar.generate(qwen3, PROMPTS[:1], "selar", temperature=0, max_new_tokens=40, tau=0.5)[0]
        assert getattr(msg, "reasoning_content", None) or msg.model_extra.get("reasoning_content")
        reasoning = getattr(msg, "reasoning_content", None) or msg.model_extra["reasoning_content"]
        assert reasoning.strip() == want.reasoning
        assert msg.content.strip() == want.answer
    finally:
        srv.stop()


def test_server_completions_on_a_closed_think_prompt(qwen3):
    """Bug 4 of issue 28: /v1/completions with a prompt whose think block is closed (thinking off)
    returns the answer as its text, and no reasoning (before, the text was "" and the answer came
    back as reasoning)."""
    openai = pytest.importorskip("openai")
    from selar.server import Settings, start_in_thread

    prompt = qwen3.tokenizer.decode(encode(qwen3, PROMPTS[0], False))
    want = selar.generate(qwen3, [prompt], "selar", temperature=0, max_new_tokens=20, tau=0.5,
                          prompt_token_ids=[encode(qwen3, PROMPTS[0], False)])[0]  # fmt: skip
    assert want.num_soft_steps == 0 and want.answer.strip() in ("yes", "no")
    srv = start_in_thread(qwen3, Settings(model_name="tiny-qwen3", max_tokens=48, default_max_tokens=20), max_batch=2)
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        for stream in (False, True):
            r = client.completions.create(model="tiny-qwen3", prompt=prompt, max_tokens=20, temperature=0,
                                          stream=stream, extra_body={"method": "selar", "tau": 0.5})  # fmt: skip
            chunks = list(r) if stream else [r]
            text = "".join(c.choices[0].text or "" for c in chunks)
            reasoning = "".join((c.choices[0].model_extra or {}).get("reasoning") or "" for c in chunks)
            assert text.strip() == want.answer.strip() and reasoning == ""
    finally:
        srv.stop()
