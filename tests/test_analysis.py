"""Analysis: the logit lens against a direct computation (a truncated copy of the model),
the lens records at soft steps, and the entropy summary."""

from __future__ import annotations

import copy

import torch

import selar
from selar.analysis import entropy, logit_lens


def test_layer_probs_equal_truncated_models(peaked):
    hf = peaked.hf_model
    ids = torch.tensor([selar.format_prompt(peaked, "How many clips did Natalia sell?")])
    out = hf(input_ids=ids, output_hidden_states=True)
    lens = logit_lens.layer_probs(hf, out.hidden_states)
    n_layers = hf.config.num_hidden_layers
    assert lens.shape[0] == n_layers + 1
    # the last entry is the model's own output distribution
    assert torch.allclose(lens[-1, 0], torch.softmax(out.logits[0, -1].float(), -1), atol=1e-6)
    # layer i: a copy of the model keeping only its first i blocks, with the same norm and head
    for i in range(0, n_layers):
        cut = copy.deepcopy(hf)
        cut.model.layers = cut.model.layers[:i]
        cut.config.num_hidden_layers = i
        direct = torch.softmax(cut(input_ids=ids).logits[0, -1].float(), -1)
        assert torch.allclose(lens[i, 0], direct, atol=1e-5), i


def test_lens_records_soft_steps(peaked):
    prompts = ["How many clips did Natalia sell?", "2 + 3 ="]
    recs = logit_lens.collect(
        peaked, prompts, push_weight=1.0, temperature=0, tau=0.9, protect_symbols=False, max_new_tokens=8
    )
    # every soft input that was fed gets a record (the soft input of a row's last step is never fed)
    soft_fed = 0
    for r in selar.generate(
        peaked, prompts, "selar", temperature=0, tau=0.9, protect_symbols=False, max_new_tokens=8, trace=True
    ):
        soft_fed += sum(t["soft"] for t in r.trace[:-1])
    assert len(recs) == soft_fed > 0
    n_layers = peaked.hf_model.config.num_hidden_layers
    assert all(len(r["p_top1"]) == n_layers + 1 for r in recs)
    summ = logit_lens.summarize(recs)
    assert summ["soft_steps"] == len(recs) and 0 <= min(summ["p_top1"]) <= max(summ["p_top1"]) <= 1


def test_entropy_summary():
    seqs = [[0.1, 0.9, 0.2, 0.6], [0.0, 0.0]]
    s = entropy.summarize(seqs, taus=(0.5,), positions=2)
    assert s["steps"] == 6 and abs(s["share_above"]["0.5"] - 2 / 6) < 1e-9
    assert s["by_position"]["share_above"]["0.5"] == [0.25, 0.25]  # first halves: 1/2 and 0/1; second: 1/2, 0/1
    assert sum(s["histogram"]["counts"]) == 6


def test_entropy_traces_the_normalised_topk_entropy_for_every_method(tiny):
    """Bug 7 of issue 28: SwiR traces its full-vocabulary entropy in nats, which the [0, 1]
    histogram dropped. Every method's trace is the normalised top-3 entropy: for SwiR as for cot
    on its first step (the same prompt, the same logits), and the histogram holds every step."""
    prompts = ["How many clips did Natalia sell?", "2 + 3 ="]
    opts = {"temperature": 0, "max_new_tokens": 6}
    for method in ("swir", "soft-thinking", "selar"):
        seqs = entropy.collect(tiny, prompts, method, **opts)
        s = entropy.summarize(seqs)
        assert s["steps"] == sum(len(q) for q in seqs) == sum(s["histogram"]["counts"]) > 0, method
        assert all(0.0 <= v <= 1.0 for q in seqs for v in q)
    cot = entropy.collect(tiny, prompts, "cot", **opts)
    swir = entropy.collect(tiny, prompts, "swir", **opts)
    assert [q[0] for q in swir] == [q[0] for q in cot]
