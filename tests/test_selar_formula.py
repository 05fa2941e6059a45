"""SeLaR's soft input against an independent float64 computation of the spec's formulas,
per row, in a real batched decode where some rows are certain and some are not."""

from __future__ import annotations

import math

import pytest
import torch

import selar
from selar.engines.transformers import TransformersEngine

pytestmark = pytest.mark.arithmetic  # float32 decoding against a float64 reference

PROMPTS = [
    "How many clips did Natalia sell?",
    "2 + 3 =",
    "Weng earns $12 an hour for babysitting.",
    "First, 48 / 2 = 24. Then",
]


def reference_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """p_t over the full vocabulary in float64: softmax, top-k, top-p (greedy: T = 1)."""
    z = logits.double()
    kth = z.topk(top_k).values[-1]
    z = torch.where(z >= kth, z, torch.tensor(-math.inf, dtype=z.dtype))
    p = torch.softmax(z, -1)
    order = p.argsort(descending=True)
    keep = torch.zeros_like(p, dtype=torch.bool)
    mass = 0.0
    for v in order.tolist():
        if mass >= top_p or p[v] == 0:
            break
        keep[v] = True
        mass += float(p[v])
    p = torch.where(keep, p, torch.zeros_like(p))
    return p / p.sum()


def reference_input(p: torch.Tensor, table: torch.Tensor, k: int, tau: float, lam: float, token: int):
    """(soft?, input vector) from the spec, in float64."""
    top = p.topk(k)
    ids, pk = top.indices, top.values
    p_hat = pk / pk.sum()
    h = -sum(float(q) * math.log(float(q)) for q in p_hat if q > 0) / math.log(k)
    if h <= tau:
        return False, table[token]
    e = (p_hat[:, None] * table[ids]).sum(0)
    v_star = int(p.argmax())
    delta = e - table[v_star]
    if float(delta.norm()) == 0.0:
        return True, e
    return True, e + lam * h * delta / delta.norm() * delta.norm()


def test_soft_inputs_match_float64_reference(peaked, monkeypatch):
    records = []
    original = TransformersEngine._forward

    def spy(self, embeds, position_ids):
        logits = original(self, embeds, position_ids)
        records.append((embeds.detach().clone(), logits.clone()))
        return logits

    monkeypatch.setattr(TransformersEngine, "_forward", spy)
    tau, k, lam = 0.9, 3, 1.0
    res = selar.generate(
        peaked,
        PROMPTS,
        "selar",
        temperature=0,
        top_k=20,
        top_p=0.95,
        tau=tau,
        k=k,
        push_weight=lam,
        protect_symbols=False,
        max_new_tokens=6,
        batch_size=4,
    )
    table = peaked.hf_model.get_input_embeddings().weight.detach().double()
    order = sorted(range(len(PROMPTS)), key=lambda i: len(res[i].prompt_token_ids))  # batch row order
    soft_seen = certain_seen = 0
    for t in range(5):  # the input fed after emitting token t is records[t + 1][0]
        logits = records[t][1]
        fed = records[t + 1][0][:, 0, :].double()
        for row, i in enumerate(order):
            p = reference_p(logits[row], 20, 0.95)
            soft, vec = reference_input(p, table, k, tau, lam, res[i].token_ids[t])
            assert torch.allclose(fed[row], vec, atol=1e-5), (t, row)
            soft_seen += soft
            certain_seen += not soft
    assert soft_seen > 0 and certain_seen > 0  # the batch mixes both kinds of rows


def test_weights_formula_direct():
    from selar.methods.selar import selar_weights

    p_hat = torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]])
    h = torch.tensor([0.9, 0.3])
    w = selar_weights(p_hat, h, 1.0)
    assert torch.allclose(w.sum(-1), torch.ones(2))  # a push keeps the total weight at 1
    expected0 = (1 + 0.9) * p_hat[0] - torch.tensor([0.9, 0.0, 0.0])
    assert torch.allclose(w[0], expected0)
    assert torch.allclose(selar_weights(p_hat, h, 0.0), p_hat)


def test_batch_gate_scope_reproduces_reference(peaked):
    kw = dict(temperature=0, max_new_tokens=10, protect_symbols=False, tau=0.9, trace=True)
    row = selar.generate(peaked, PROMPTS, "selar", **kw)
    batch = selar.generate(peaked, PROMPTS, "selar", gate_scope="batch", batch_size=4, **kw)
    # with the batch-wide gate, a step is soft for every row as soon as one row is uncertain
    n = min(len(r.trace) for r in batch)
    for t in range(n):
        flags = {r.trace[t]["soft"] for r in batch}
        assert len(flags) == 1
    assert sum(r.num_soft_steps for r in batch) >= sum(r.num_soft_steps for r in row)
