"""Soft Thinking's cold stop and </think> rule; SwiR's switching, window and switch-count
rules, on crafted logit sequences through the real decode loop."""

from __future__ import annotations

import math

import torch
from fake import peaked_logits, run, vocab

from selar.methods.soft_thinking import SoftThinking, SoftThinkingOptions
from selar.methods.swir import SwiR, SwiROptions

V, THINK, END = 40, 30, 31


def seq(*steps):
    return torch.stack([torch.stack(list(steps))])


def test_soft_thinking_end_on_top1_think_end():
    uncertain = peaked_logits(V, 5, m=4)  # top-1 is token 5 (ties broken by index)
    steps = [uncertain, uncertain, peaked_logits(V, END), uncertain, uncertain]
    m = SoftThinking(SoftThinkingOptions(cold_stop=False), vocab(V, THINK, END))
    (row,), eng = run(m, seq(*steps), think_end=END, temperature=0.0)
    assert row.token_ids == [5, 5, END, 5, 5]
    assert row.soft == [True, True, False, False, False]
    mix = eng.fed[0][1]  # first input: the renormalised top tokens, uniform over 4
    assert sorted(mix.ids[0].tolist()[:4]) == [5, 6, 7, 8]
    assert torch.allclose(mix.weights[0][:4], torch.full((4,), 0.25))


def test_soft_thinking_min_p_and_max_topk():
    z = torch.full((V,), -30.0)
    z[:12] = torch.linspace(0, -5, 12)  # 12 candidates, decreasing
    m = SoftThinking(SoftThinkingOptions(max_topk=5, mix_min_p=0.1, cold_stop=False), vocab(V, THINK, END))
    (row,), eng = run(m, seq(z, z), think_end=END)
    mix = eng.fed[0][1]
    p = torch.softmax(z, -1)[:5]
    p = torch.where(p >= 0.1 * p[0], p, torch.zeros_like(p))
    assert mix.ids[0].tolist() == [0, 1, 2, 3, 4]
    assert torch.allclose(mix.weights[0], p / p.sum(), atol=1e-6)


def test_soft_thinking_cold_stop_after_patience():
    certain = peaked_logits(V, 3)  # entropy ~ 0
    uncertain = peaked_logits(V, 5, m=4)
    steps = [uncertain, certain, certain, uncertain, certain, certain, certain, uncertain, uncertain]
    m = SoftThinking(SoftThinkingOptions(cold_stop_entropy=0.01, patience=3), vocab(V, THINK, END))
    (row,), _ = run(m, seq(*steps), think_end=END)
    # the streak of 2 is broken; the streak of 3 ends reasoning on its third step
    assert row.token_ids[:7] == [5, 3, 3, 5, 3, 3, END]
    assert row.soft[:7] == [True] * 6 + [False]
    assert not any(row.soft[7:])


LINE_BREAK = 10


class _LineTok:
    """A tokenizer whose line break is one token (LINE_BREAK), as a real model's is."""

    def encode(self, text, add_special_tokens=False):
        return [LINE_BREAK] if text == "\n" else [20, 21, 22]


def swir_run(entropies, window, tokenizer=None, **opts):
    """One row whose step t has entropy log(m_t) (uniform over m_t tokens)."""
    steps = [peaked_logits(V, 5, m=m) for m in entropies]
    voc = vocab(V, THINK, END, tokenizer=tokenizer or _Tok())
    m = SwiR(SwiROptions(window=window, protect_symbols=False, **opts), voc)
    return run(m, seq(*steps), think_end=END, temperature=0.0)


def _swir_fed64(entropies, window, alpha0=0.6, beta0=0.7):
    """SwiR's fed inputs, from the reference code's rules (sdc17/SwiReasoning) in float64 pure
    Python: (per step, the dense weights over the vocabulary) for one row of `swir_run`."""
    T, fed = len(entropies), []
    latent, h_ref, last = True, 0.0, 0
    for t, m in enumerate(entropies):
        z = [0.0 if 5 <= v < 5 + m else -30.0 for v in range(V)]
        p = [math.exp(x) / sum(math.exp(y) for y in z) for x in z]
        h = -sum(q * math.log(q) for q in p if q > 0)
        to_exp = t > 0 and latent and h < h_ref
        to_lat = t > 0 and not latent and h > h_ref and t - last >= window
        if t == 0 or to_exp or to_lat:
            h_ref, last = h, t
        latent = latent != (to_exp or to_lat)
        a, b = alpha0 + (1 - alpha0) * t / T, beta0 + (1 - beta0) * t / T
        keep, mark = {0: (0.9, LINE_BREAK)}.get(t, (a, THINK) if to_lat else (b, END) if to_exp else (1.0, None))
        w = list(p) if latent or to_exp else [float(v == 5) for v in range(V)]
        if mark is not None:
            w = [keep * x for x in w]
            w[mark] += 1 - keep
        fed.append(w)
    return fed


def test_swir_switching_and_window():
    # H: 8 (ref) -> 4 (lower: to explicit) -> 6 (higher, but inside the window) -> 6 -> 8 (window passed:
    # to latent) -> 2 (lower: to explicit) -> 2; a switch to explicit feeds a blend, which is soft (not a token)
    ms = [8, 4, 6, 6, 8, 2, 2]
    (row,), eng = swir_run(ms, window=3, tokenizer=_LineTok())
    assert row.soft == [True, True, False, False, True, True, False]
    # every fed input as the reference code builds it, to 1e-6 relative: the first latent input blended
    # with E("\n"), the switches to explicit (t = 1, 5) b soft + (1 - b) E(</think>), the switch to
    # latent (t = 4) a soft + (1 - a) E(<think>), plain tokens in between
    assert len(eng.fed) == len(ms) - 1  # the last step's input is never fed
    for t, want in enumerate(_swir_fed64(ms, window=3)[:-1]):
        mix = eng.fed[t][1]
        got = torch.zeros(V, dtype=torch.float64)
        got[mix.ids[0] if mix.ids is not None else slice(None)] += mix.weights[0].double()
        assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=1e-12), t
    b1 = 0.7 + 0.3 * 1 / 7  # spelled out once: the switch to explicit keeps the soft input, not E(y)
    assert math.isclose(float(eng.fed[1][1].weights[0][END]), 1 - b1, rel_tol=1e-6)
    assert math.isclose(float(eng.fed[1][1].weights[0][5]), b1 / 4, rel_tol=1e-6)


def test_swir_without_a_one_token_line_break_feeds_the_plain_first_input():
    (row,), eng = swir_run([8, 8], window=3)  # _Tok: "\n" is not one token
    dense0 = eng.fed[0][1].weights[0]
    assert torch.allclose(dense0, torch.softmax(peaked_logits(V, 5, m=8), -1), atol=1e-6)


def test_swir_window_blocks_early_return_to_latent():
    (row,), _ = swir_run([8, 4, 6, 6, 8], window=10)
    assert row.soft == [True, True, False, False, False]


# latent -> explicit switches (the only ones the reference counts) at t = 1, 3, 5, 7, 9
BUDGET = [8, 4, 8, 2, 8, 2, 8, 2, 8, 2] + [8] * 10


class _Tok:
    def encode(self, text, add_special_tokens=False):
        return [20, 21, 22]


def test_swir_switch_budget_ends_a_thinking_row():
    """C = 2 on a vocabulary with think tokens: </think> is injected after the C-th to the 2C-th
    latent -> explicit switch (switching goes on after an injected </think>), the answer prefix after
    the (2C+1)-th, and the row stops; once </think> is out, every input is a plain token."""
    m = SwiR(
        SwiROptions(window=1, protect_symbols=False, max_switch_count=2, answer_tokens=6),
        vocab(V, THINK, END, tokenizer=_Tok()),
    )
    (row,), eng = run(m, seq(*[peaked_logits(V, 5, m=k) for k in BUDGET]), think_end=END, temperature=0.0)
    toks = row.token_ids
    assert [t for t in range(10) if toks[t] == END] == [4, 6, 8]
    assert toks[10:14] == [END, 20, 21, 22]
    assert len(toks) == 9 + 6 and row.finish_reason == "method"
    assert any(row.soft[:4]) and not any(row.soft[4:])
    for _, mix in eng.fed[4:]:  # after the first </think>: one-hot inputs of the emitted tokens
        assert torch.equal(mix.weights.count_nonzero(-1), torch.ones(mix.weights.shape[0], dtype=torch.long))
    assert int(eng.fed[4][1].weights[0].argmax()) == END


def test_swir_a_row_that_writes_think_end_itself_is_locked():
    """A row whose model samples </think> never switches back to latent (the reference's lock)."""
    steps = [peaked_logits(V, 5, m=8), peaked_logits(V, 5, m=4), peaked_logits(V, END)] + [
        peaked_logits(V, 5, m=k) for k in (8, 2, 8, 2, 8, 2)
    ]
    m = SwiR(SwiROptions(window=1, protect_symbols=False, max_switch_count=1), vocab(V, THINK, END, tokenizer=_Tok()))
    (row,), _ = run(m, seq(*steps), think_end=END, temperature=0.0)
    # one switch (t=1) then the model's own </think>: locked, no more switches, nothing injected
    assert row.token_ids[2] == END and row.token_ids[3:] == [5] * 6
    assert not any(row.soft[2:])


def test_swir_2c_injects_answer_and_stops():
    steps = [peaked_logits(V, 5, m=m) for m in BUDGET]
    m = SwiR(
        SwiROptions(window=1, protect_symbols=False, max_switch_count=2, answer_tokens=5),
        vocab(V, None, None, tokenizer=_Tok()),
    )  # no think tokens: nothing closes, the answer prefix alone is injected
    (row,), _ = run(m, seq(*steps), think_end=None, temperature=0.0)
    # the 5th (2C+1) latent -> explicit switch at t=9: the prefix from t=10, stop 5 steps after the switch
    assert row.token_ids[10:13] == [20, 21, 22]
    assert len(row.token_ids) == 9 + 5
    assert row.finish_reason == "method"
