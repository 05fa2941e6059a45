"""Continuous batching: rows that join a running batch, and rows cancelled mid-way, leave the
other rows' outputs unchanged (each equals the prompt decoded alone)."""

from __future__ import annotations

import pytest

import selar
from selar.decode import DecodeSession
from selar.engines import TransformersEngine
from selar.methods import get_method_spec, make_config

PROMPTS = [
    "How many clips did Natalia sell?",
    "2 + 3 =",
    "Weng earns $12 an hour for babysitting. How much?",
    "First, 48 / 2 = 24. Then",
]


def session(model, method, **kw):
    cfg = make_config(method, **kw)
    meth = get_method_spec(method).factory(cfg.options, model.vocab_info())
    return DecodeSession(
        TransformersEngine(model.hf_model, pad_id=model.pad_id),
        meth,
        cfg.sampling,
        stop_ids=model.stop_ids,
        think_end=model.think_end,
        reasoning_scope=True,
        max_positions=model.max_positions,
    )


@pytest.mark.parametrize("method", ["cot", "selar", "swir", "soft-thinking"])
def test_rows_joining_mid_decode_match_solo_runs(tiny_thinking, method):
    kw = dict(temperature=0.7, max_new_tokens=16, seed=5)
    solo = [selar.generate(tiny_thinking, [p], method, **kw)[0].token_ids for p in PROMPTS]
    enc = [selar.format_prompt(tiny_thinking, p) for p in PROMPTS]
    s = session(tiny_thinking, method, **kw)
    got = {}
    s.add([enc[0]], [0], [5])
    for _ in range(4):
        got.update({r.id: r.token_ids for r in s.step()})
    s.add(enc[1:3], [1, 2], [5, 5])  # join a running batch of different length
    for _ in range(3):
        got.update({r.id: r.token_ids for r in s.step()})
    s.add([enc[3]], [3], [5])
    while s.size:
        got.update({r.id: r.token_ids for r in s.step()})
    assert [got[i] for i in range(4)] == solo


def test_cancel_frees_the_row(tiny):
    enc = [selar.format_prompt(tiny, p) for p in PROMPTS[:2]]
    s = session(tiny, "selar", temperature=0, max_new_tokens=12)
    s.add(enc, [10, 11], [0, 0])
    s.step()
    s.cancel(10)
    done = s.step()
    assert [(r.id, r.finish_reason, len(r.token_ids)) for r in done] == [(10, "cancelled", 2)]
    assert s.size == 1
    rest = []
    while s.size:
        rest += s.step()
    alone = selar.generate(tiny, PROMPTS[1], "selar", temperature=0, max_new_tokens=12)[0]
    assert rest[0].token_ids == alone.token_ids
