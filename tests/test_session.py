"""Continuous batching: rows that join a running batch, and rows cancelled mid-way, leave the
other rows' outputs unchanged (each equals the prompt decoded alone)."""

from __future__ import annotations

import forced
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
    """The session's bookkeeping (rows joining and leaving, per-row steps, seeds and method state)
    on an engine that computes every row alone: the same kernels on the same layout as each
    prompt decoded alone, so the tokens must be equal, token for token."""
    kw = dict(temperature=0.7, max_new_tokens=16, seed=5)
    solo = [selar.generate(tiny_thinking, [p], method, **kw)[0] for p in PROMPTS]
    enc = [selar.format_prompt(tiny_thinking, p) for p in PROMPTS]
    s = session(tiny_thinking, method, **kw)
    s.engine = forced.SoloEngine(lambda: TransformersEngine(tiny_thinking.hf_model, pad_id=tiny_thinking.pad_id))
    got = forced.joined(s, enc)
    assert [r.token_ids for r in got] == [r.token_ids for r in solo]
    assert [sum(r.soft) for r in got] == [r.num_soft_steps for r in solo]
    assert [r.finish_reason for r in got] == [r.finish_reason for r in solo]


@pytest.mark.arithmetic
@pytest.mark.parametrize("method", ["selar", "swir", "soft-thinking"])
def test_batched_rows_match_rows_alone_teacher_forced(tiny_thinking, method):
    """The batched engine (rows of different lengths, joining and leaving) against every row
    computed alone: different arithmetic (padding, batch width), so teacher-forced, step by step."""
    enc = [selar.format_prompt(tiny_thinking, p) for p in PROMPTS]
    solo = forced.SoloEngine(lambda: TransformersEngine(tiny_thinking.hf_model, pad_id=tiny_thinking.pad_id))
    kw = {"protect_symbols": False} if method == "selar" else {}
    s, rep = forced.session(tiny_thinking, solo, method, tol=1e-4, temperature=0.7, max_new_tokens=16, seed=5, **kw)
    forced.joined(s, enc)
    print(f"\n{method}, batched vs alone:", rep)
    rep.assert_ok()


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


def test_stop_check_reads_only_the_tail_a_stop_string_can_span(tiny):
    """Issue 27, bug 4: the stop-string check copied every row's whole token history to Python on
    every step (O(length) per step); it is handed the last `stop_tail` tokens only, and still
    stops where a check of the whole text does."""
    from selar.config import stop_tail
    from selar.text import stop_checker

    enc = [selar.format_prompt(tiny, p) for p in PROMPTS]
    free = selar.generate(tiny, PROMPTS, "cot", temperature=0, max_new_tokens=60, ignore_eos=True)
    stops = [free[0].text[-6:-3]]  # a string the first row writes late in its text
    check, seen = stop_checker(tiny.tokenizer, stops), []

    def spy(row, ids):
        seen.append(len(ids))
        return check(ids)

    s = session(tiny, "cot", temperature=0, max_new_tokens=60, ignore_eos=True)
    s.stop_check, s.stop_tail = spy, stop_tail(stops)
    rows = sorted(s.add(enc, range(4), [0] * 4) or [], key=lambda r: r.id)
    while s.size:
        rows += s.step()
    rows.sort(key=lambda r: r.id)
    assert max(seen) == stop_tail(stops) < 60  # whole histories were 60 tokens long
    ref = selar.generate(tiny, PROMPTS, "cot", temperature=0, max_new_tokens=60, ignore_eos=True, stop=stops)
    assert [r.token_ids for r in rows] == [r.token_ids for r in ref]
    assert rows[0].finish_reason == "stop_string" and len(rows[0].token_ids) < 60
    whole = [tiny.tokenizer.decode(r.token_ids[:-1], skip_special_tokens=True) for r in rows]
    assert not any(stops[0] in w for w in whole)  # no row ran past a stop it had written
