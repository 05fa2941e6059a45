"""The teacher-forced comparison the cross-arithmetic tests use (tests/forced.py) can fail: an
engine whose logits are off, or a record with a decided token changed, is caught."""

from __future__ import annotations

import forced
import pytest

import selar
from selar.engines import TransformersEngine

PROMPTS = ["How many clips did Natalia sell?", "2 + 3 =", "Weng earns $12 an hour for babysitting."]


class Off(TransformersEngine):
    """The same model with every logit after the prefill shifted by a ramp over the vocabulary."""

    def step(self, inputs):
        logits = super().step(inputs)
        return logits + 0.5 * (logits.shape[-1] - 1 - __import__("torch").arange(logits.shape[-1])) / logits.shape[-1]


@pytest.mark.arithmetic
def test_compare_passes_on_equal_arithmetic_and_fails_on_wrong_logits(peaked):
    enc = [selar.format_prompt(peaked, p) for p in PROMPTS]
    kw = dict(tau=0.6, protect_symbols=False, max_new_tokens=12)
    same = forced.compare(peaked, TransformersEngine(peaked.hf_model, peaked.pad_id), enc, "selar", tol=1e-5, **kw)
    same.assert_ok(min_decided=0.9)
    assert same.soft_steps > 0 and same.max_logit_err == 0.0
    off = forced.compare(peaked, Off(peaked.hf_model, peaked.pad_id), enc, "selar", tol=0.05, **kw)
    with pytest.raises(AssertionError, match="token|soft|weights|logits differ"):
        off.assert_ok(min_decided=0.0)


@pytest.mark.arithmetic
def test_replay_accepts_its_own_record_and_catches_a_changed_token(peaked):
    enc = [selar.format_prompt(peaked, p) for p in PROMPTS]
    kw = dict(tau=0.6, protect_symbols=False, max_new_tokens=12, temperature=0.7, seed=3)
    rows = selar.generate(peaked, PROMPTS, "selar", trace=True, **kw)
    tokens, soft = [r.token_ids for r in rows], [[t["soft"] for t in r.trace] for r in rows]
    ok = forced.replay(peaked, enc, tokens, "selar", tol=1e-5, soft=soft, **kw)
    ok.assert_ok(min_decided=0.9)
    changed = [list(t) for t in tokens]
    changed[1][0] = (changed[1][0] + 1) % peaked.vocab_size  # step 0: before any soft input
    bad = forced.replay(peaked, enc, changed, "selar", tol=1e-5, soft=soft, **kw)
    with pytest.raises(AssertionError, match="row 1 step 0: this engine emits"):
        bad.assert_ok(min_decided=0.0)
