"""CoT at temperature 0 equals model.generate token for token; SeLaR with tau = 1 equals CoT."""

from __future__ import annotations

import forced
import pytest
import torch

import selar

PROMPTS = [
    "How many clips did Natalia sell?",
    "Weng earns $12 an hour for babysitting. Yesterday she did 50 minutes. How much did she earn?",
    "2 + 3 =",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. Total?",
]


def hf_greedy(model: selar.Model, prompts, max_new_tokens: int) -> list[list[int]]:
    """Independent reference: transformers' own generate on the same left-padded batch."""
    enc = [selar.format_prompt(model, p) for p in prompts]
    n = max(map(len, enc))
    pad = model.pad_id
    ids = torch.tensor([[pad] * (n - len(e)) + e for e in enc])
    mask = torch.tensor([[0] * (n - len(e)) + [1] * len(e) for e in enc])
    out = model.hf_model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=model.stop_ids,
        pad_token_id=pad,
        top_k=None,
        top_p=None,
        temperature=None,
    )
    rows = []
    for r in out[:, n:].tolist():
        cut = next((i + 1 for i, t in enumerate(r) if t in model.stop_ids), len(r))
        rows.append(r[:cut])
    return rows


def ours(model, prompts, method="cot", n=24, **kw):
    return [r.token_ids for r in selar.generate(model, prompts, method, temperature=0, max_new_tokens=n, **kw)]


@pytest.mark.arithmetic
@pytest.mark.parametrize("batch", [1, 4])
def test_cot_greedy_equals_generate_tiny(tiny, batch):
    prompts = PROMPTS[:batch]
    assert ours(tiny, prompts, batch_size=batch) == hf_greedy(tiny, prompts, 24)


def test_cot_greedy_equals_generate_thinking_model(tiny_thinking):
    assert ours(tiny_thinking, PROMPTS, batch_size=4) == hf_greedy(tiny_thinking, PROMPTS, 24)


@pytest.mark.slow
@pytest.mark.arithmetic
@pytest.mark.parametrize("batch", [1, 4])
def test_cot_greedy_equals_generate_smollm2(smollm2, batch):
    prompts = PROMPTS[:batch]
    got = ours(smollm2, prompts, n=40, batch_size=batch)
    ref = hf_greedy(smollm2, prompts, 40)
    assert got == ref
    assert any(len(r) < 40 for r in ref) or batch == 1  # some row stops early: pruning exercised


@pytest.mark.slow
def test_selar_tau1_equals_cot_smollm2_sampled(smollm2):
    kw = dict(temperature=0.6, max_new_tokens=32, seed=7)
    cot = selar.generate(smollm2, PROMPTS, "cot", **kw)
    sel = selar.generate(smollm2, PROMPTS, "selar", tau=1.0, **kw)
    assert [r.token_ids for r in sel] == [r.token_ids for r in cot]
    assert all(r.num_soft_steps == 0 for r in sel)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_selar_tau1_equals_cot(tiny, temperature):
    kw = dict(temperature=temperature, max_new_tokens=24, seed=3)
    cot = selar.generate(tiny, PROMPTS, "cot", **kw)
    sel = selar.generate(tiny, PROMPTS, "selar", tau=1.0, **kw)
    assert [r.token_ids for r in sel] == [r.token_ids for r in cot]
    assert all(r.num_soft_steps == 0 for r in sel)


def test_selar_goes_soft_and_changes_output(tiny):
    kw = dict(temperature=0.0, max_new_tokens=24, protect_symbols=False)
    sel = selar.generate(tiny, PROMPTS, "selar", tau=0.0, **kw)
    cot = selar.generate(tiny, PROMPTS, "cot", temperature=0.0, max_new_tokens=24)
    assert all(r.num_soft_steps > 0 for r in sel)
    assert [r.token_ids for r in sel] != [r.token_ids for r in cot]


@pytest.mark.parametrize("method", ["cot", "selar", "soft-thinking", "swir"])
def test_output_independent_of_batch(tiny_thinking, method, monkeypatch):
    """Rows are seeded alone and results come back in prompt order, whatever the batches. Checked
    token for token on an engine that computes each row alone (the same kernels on the same layout
    as a prompt decoded alone); the batched engine's own arithmetic against rows alone is compared
    teacher-forced in test_session.py."""
    from selar.engines import TransformersEngine

    kw = dict(temperature=0.7, max_new_tokens=20, seed=11)
    hf, pad = tiny_thinking.hf_model, tiny_thinking.pad_id
    monkeypatch.setattr(tiny_thinking, "make_engine", lambda: forced.SoloEngine(lambda: TransformersEngine(hf, pad)))
    alone = [selar.generate(tiny_thinking, [p], method, **kw)[0].token_ids for p in PROMPTS]
    batched = [r.token_ids for r in selar.generate(tiny_thinking, PROMPTS, method, batch_size=4, **kw)]
    shuffled = selar.generate(tiny_thinking, PROMPTS[::-1], method, batch_size=3, **kw)
    assert batched == alone
    assert [r.token_ids for r in shuffled][::-1] == alone


def test_seed_reproducible_and_varies(tiny):
    a = selar.generate(tiny, PROMPTS[:2], "selar", temperature=1.0, max_new_tokens=20, seed=1)
    b = selar.generate(tiny, PROMPTS[:2], "selar", temperature=1.0, max_new_tokens=20, seed=1)
    c = selar.generate(tiny, PROMPTS[:2], "selar", temperature=1.0, max_new_tokens=20, seed=2)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]


def test_stop_strings_cut_the_text(tiny):
    full = selar.generate(tiny, PROMPTS[:2], "cot", temperature=0, max_new_tokens=24)
    stop = full[0].text[len(full[0].text) // 2 :][:3]
    cut = selar.generate(tiny, PROMPTS[:2], "cot", temperature=0, max_new_tokens=24, stop=[stop])
    assert cut[0].finish_reason == "stop_string" and stop not in cut[0].text
    assert full[0].text.startswith(cut[0].text) and len(cut[0].token_ids) < len(full[0].token_ids)
    assert cut[0].token_ids == full[0].token_ids[: len(cut[0].token_ids)]
    if stop not in full[1].text:  # the other row is untouched
        assert cut[1].token_ids == full[1].token_ids
