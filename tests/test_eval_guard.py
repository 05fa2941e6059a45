"""The answer guard (soft_scope "guarded"): once a row's text holds an answer marker, its later
inputs are plain tokens. Checked against an independent computation: the first step at which the
row's full decoded text holds a marker."""

from __future__ import annotations

import torch
from conftest import make_tokenizer

import selar
from selar.decode import DecodeSession, run_to_end
from selar.methods import get_method_spec, make_config
from selar.methods.base import VocabInfo
from selar.scope import answer_guard, marker_end_tokens

MARKERS = ("\\boxed", "answer is")
TEXTS = [
    "So the final answer is \\boxed{72}. Then 48 + 24",  # "answer is" first
    "First, 48 / 2 = 24. Then 48 + 24 = 72.",  # no marker
    "Weng earns 12. So \\boxed{72} and 48 / 2",  # "\boxed" later
]


class Scripted:
    """An engine whose rows emit given token sequences (greedy), with a near-tie second candidate
    at every step, so that an ungated method's inputs are real mixtures. Records what it is fed."""

    def __init__(self, seqs: list[list[int]], vocab: int, eos: int):
        self.rows = torch.arange(len(seqs))
        self.t = 0
        width = max(map(len, seqs)) + 1
        self.logits = torch.full((len(seqs), width, vocab), -20.0)
        for b, seq in enumerate(seqs):
            for t, tok in enumerate(seq + [eos]):
                self.logits[b, t, tok] = 0.0
                self.logits[b, t, (tok + 1) % vocab] = -0.5
            self.logits[b, len(seq) + 1 :, eos] = 0.0
        self.fed: list[tuple[torch.Tensor, object]] = []

    def add(self, prompts):
        return self.logits[self.rows, 0]

    def step(self, mix):
        self.fed.append((self.rows.clone(), mix))
        self.t += 1
        return self.logits[self.rows, min(self.t, self.logits.shape[1] - 1)]

    def select(self, keep):
        self.rows = self.rows[keep]

    def reset(self):
        self.rows = self.rows[:0]


def first_marker_step(tok, ids: list[int], markers) -> int | None:
    """Independent: the first step whose full decoded text (from the start) holds a marker."""
    for j in range(len(ids)):
        if any(m in tok.decode(ids[: j + 1], skip_special_tokens=True) for m in markers):
            return j
    return None


def run(scope: str, markers=MARKERS):
    tok = make_tokenizer()
    V = len(tok)
    seqs = [tok.encode(t, add_special_tokens=False) for t in TEXTS]
    eng = Scripted(seqs, V, tok.eos_token_id)
    cfg = make_config(
        "selar-no-gate",
        temperature=0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=64,
        soft_scope=scope,
        protect_symbols=False,
        answer_markers=markers,
    )
    method = get_method_spec("selar-no-gate").factory(cfg.options, VocabInfo(size=V, tokenizer=tok))
    s = cfg.sampling
    guard = answer_guard(tok, s.answer_markers, V) if s.guarded else None
    session = DecodeSession(
        eng,
        method,
        s,
        stop_ids=[tok.eos_token_id],
        think_end=None,
        reasoning_scope=s.reasoning_only(False),
        answer_guard=guard,
    )
    rows = run_to_end(session, [[1]] * len(seqs), [0] * len(seqs))
    return tok, seqs, rows, eng


def fed_soft(eng, row: int) -> list[bool]:
    """Per step of `row`: whether the input fed after it was a mixture (not a one-hot token)."""
    out = []
    for rows, mix in eng.fed:
        where = (rows == row).nonzero()[:, 0]
        if where.numel():
            w = mix.weights[where[0]]
            out.append(bool((w > 0).sum() > 1))
    return out


def test_guard_against_independent_marker_positions():
    tok, seqs, guarded, eng = run("guarded")
    _, _, unguarded, eng_all = run("all")
    for b, (g, u, seq) in enumerate(zip(guarded, unguarded, seqs)):
        assert g.token_ids[: len(seq)] == seq == u.token_ids[: len(seq)]  # same text: only the inputs differ
        j = first_marker_step(tok, seq, MARKERS)
        n = len(g.soft)
        expected = [True] * n if j is None else [True] * j + [False] * (n - j)
        expected[-1] = g.soft[-1]  # the eos step: fed nothing
        assert g.soft == expected, (b, j)
        assert u.soft[:-1] == [True] * (n - 1)  # soft_scope=all: every step soft
        # what the engine was fed agrees with the recorded flags
        assert fed_soft(eng, b) == g.soft[: len(fed_soft(eng, b))]
    assert [first_marker_step(tok, s, MARKERS) is None for s in seqs] == [False, True, False]


def test_marker_spanning_tokens_and_custom_markers():
    tok, seqs, rows, _ = run("guarded", markers=("48 + 24",))
    found = 0
    for seq, row in zip(seqs, rows):
        j = first_marker_step(tok, seq, ("48 + 24",))
        if j is None:
            assert all(row.soft[:-1])
            continue
        found += 1
        assert len(tok.decode(seq[j : j + 1])) < len("48 + 24")  # the marker spans several tokens
        assert row.soft[:j] == [True] * j and not any(row.soft[j:])
    assert found == 2


def test_marker_end_tokens_mask():
    vocab = ["Ġthe", "boxed", "{", "Ġis", "<0x64>", "ab", "d"]
    assert marker_end_tokens(vocab, ("\\boxed",)).tolist() == [False, True, False, False, True, False, True]
    assert marker_end_tokens(vocab, ("answer is", "\\boxed")).tolist() == [False, True, False, True, True, False, True]
    assert marker_end_tokens(vocab, ("answer ",)) is None  # ends in a space: every token is checked


def test_guard_through_the_model_api(tiny):
    """End to end on a real (tiny) model: the guarded run equals the unguarded one up to the first
    marker, and has no soft step after it."""
    prompts = ["What is 1+1?", "How many clips did Natalia sell?"]
    kw = dict(temperature=0, max_new_tokens=40, trace=True)
    free = selar.generate(tiny, prompts, "selar-no-gate", soft_scope="all", **kw)
    guarded = selar.generate(tiny, prompts, "selar-no-gate", soft_scope="guarded", answer_markers=("e",), **kw)
    checked = 0
    for f, g in zip(free, guarded):
        j = first_marker_step(tiny.tokenizer, g.token_ids, ("e",))
        if j is None:
            assert g.token_ids == f.token_ids
            continue
        checked += 1
        assert g.token_ids[: j + 1] == f.token_ids[: j + 1]  # same inputs before step j
        assert [t["soft"] for t in g.trace[:j]] == [t["soft"] for t in f.trace[:j]]
        assert not any(t["soft"] for t in g.trace[j:])
        assert any(t["soft"] for t in f.trace[j:])  # the guard changed something
    assert checked >= 1
