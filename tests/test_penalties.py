"""Vendor penalties (presence, frequency, repetition; issue 29 part 4): the arithmetic against
transformers' own `RepetitionPenaltyLogitsProcessor` and the OpenAI/vLLM formula in float64,
checked at the door, and applied by the decode session before p_t and the method's step on the
transformers engines (eager and static-cache), teacher-forced against transformers' processor on
the model's own forward, and independent of the batch layout. vLLM's own function is compared in
tests/test_vllm.py, the plugin's state in tests/test_vllm_options.py, llama.cpp in
tests/test_llamacpp.py, the server in tests/test_server.py."""

from __future__ import annotations

import dataclasses

import forced
import pytest
import torch
from conftest import make_model, make_tokenizer

import selar
from selar.config import SamplingConfig
from selar.decode import new_session, run_to_end
from selar.engines.transformers.static import StaticEngine
from selar.errors import ConfigError
from selar.methods import make_config
from selar.sampling import apply_penalties, token_counts, token_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

V = 97


def _rows(seed: int = 0):
    """Logits with positive, negative and zero entries, and per row a prompt and an output."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, V, generator=g) * 4
    logits[:, ::11] = 0.0
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in (5, 17, 1)]
    outputs = [torch.randint(0, V // 3, (n,), generator=g).tolist() for n in (9, 0, 30)]  # repeats
    return logits, prompts, outputs


def test_repetition_penalty_equals_transformers_processor():
    from transformers import RepetitionPenaltyLogitsProcessor

    logits, prompts, outputs = _rows()
    for penalty in (1.3, 0.7):
        cfg = SamplingConfig(repetition_penalty=penalty)
        got = apply_penalties(logits, token_counts(outputs, V), token_mask(prompts, V), cfg)
        for j, (p, o) in enumerate(zip(prompts, outputs)):
            want = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([p + o]), logits[j : j + 1].clone())
            torch.testing.assert_close(got[j : j + 1], want, rtol=1.2e-7, atol=0)  # 1/p * x vs x / p: 1 ulp
        assert not torch.equal(got, logits)


@pytest.mark.parametrize("pres,freq,rep", [(1.5, 0.0, 1.0), (0.0, -0.8, 1.0), (1.5, 0.5, 1.2), (-2.0, 2.0, 0.9)])
def test_penalties_equal_the_openai_formula_in_float64(pres, freq, rep):
    """OpenAI's definition (vLLM's order): repetition on prompt or output tokens, then
    `- count * frequency - (count > 0) * presence` over the generated tokens only."""
    logits, prompts, outputs = _rows(1)
    cfg = SamplingConfig(presence_penalty=pres, frequency_penalty=freq, repetition_penalty=rep)
    got = apply_penalties(logits, token_counts(outputs, V), token_mask(prompts, V), cfg)
    want = logits.double().clone()
    for j, (p, o) in enumerate(zip(prompts, outputs)):
        for v in range(V):
            c = o.count(v)
            if v in p or c:
                want[j, v] = want[j, v] / rep if want[j, v] > 0 else want[j, v] * rep
            want[j, v] -= c * freq + (c > 0) * pres
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    # presence and frequency count the output only: a prompt token not generated is untouched
    only_prompt = token_mask(prompts, V) & (token_counts(outputs, V) == 0)
    if rep == 1.0:
        assert torch.equal(got[only_prompt], logits[only_prompt])


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("presence_penalty", 2.5, r"presence_penalty must be in \[-2.0, 2.0\], got 2.5"),
        ("frequency_penalty", -3, r"frequency_penalty must be in \[-2.0, 2.0\], got -3"),
        ("repetition_penalty", 0.0, r"repetition_penalty must be in \(0.0, 10000.0\], got 0.0"),
        ("repetition_penalty", float("nan"), "repetition_penalty must be a finite number"),
        ("presence_penalty", "1.5", "presence_penalty must be a number"),
    ],
)
def test_bad_penalties_are_refused_in_one_sentence(name, value, message):
    with pytest.raises(ConfigError, match=message):
        SamplingConfig(**{name: value})


@pytest.fixture(scope="module")
def tiny_rep():
    tok = make_tokenizer()
    model = make_model(tok, seed=2)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # peaked: some steps certain, some not
    return selar.wrap(model, tok, name="tiny-pen", compile="off")


PROMPTS = ["How many clips did Natalia sell?", "Weng earns $12 an hour.", "0 1 2 3 4 5 6"]


class _Seen:
    """The session's method, recording the logits it is given (ctx.logits) per row and step."""

    def __init__(self, method, session):
        self.method, self.session, self.seen = method, session, {}
        self.name, self.num_candidates = method.name, method.num_candidates

    def init_state(self, n, device):
        return self.method.init_state(n, device)

    def step(self, ctx, state):
        for j, (rid, k) in enumerate(zip(self.session.rows["id"].tolist(), ctx.step.tolist())):
            self.seen[(rid, k)] = (ctx.logits[j].clone(), self.session.logits[j].clone())  # (given, raw)
        return self.method.step(ctx, state)


@pytest.mark.parametrize("engine", ["eager", "static"])
@pytest.mark.parametrize("method", ["cot", "selar"])
def test_the_method_sees_transformers_penalised_logits(tiny_rep, engine, method):
    """Teacher-forced against transformers: each step's logits the method is given equal the
    model's own forward over prompt + the row's tokens so far, through transformers'
    RepetitionPenaltyLogitsProcessor (prompt and output) and then the OpenAI presence penalty
    (output only); greedy tokens are their argmax wherever the margin decides it. After a row's
    first soft input (no token to feed a forward) the processor is applied to the engine's raw
    logits of that step instead."""
    from transformers import RepetitionPenaltyLogitsProcessor

    m = tiny_rep
    kw = dict(temperature=0.0, max_new_tokens=12, repetition_penalty=1.3, presence_penalty=1.5)
    cfg = make_config(method, **kw)
    cfg = dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, ignore_eos=True))
    s = new_session(m, cfg)
    if engine == "static":
        s.engine = StaticEngine(m.hf_model, pad_id=m.pad_id, compile=False)
    s.method = rec = _Seen(s.method, s)
    prompts = [selar.format_prompt(m, p) for p in PROMPTS]
    rows = run_to_end(s, prompts, [0] * len(prompts))
    plain = selar.generate(m, PROMPTS, method, **{k: v for k, v in kw.items() if "penalty" not in k})
    assert [r.token_ids for r in rows] != [r.token_ids for r in plain]  # the penalties change the text
    if method == "selar":
        assert sum(sum(r.soft) for r in rows) > 0
    checked = 0
    for i, (p, r) in enumerate(zip(prompts, rows)):
        if any(r.soft):  # a soft input is no token: compare the steps before the first one
            n = r.soft.index(True) + 1
        else:
            n = len(r.token_ids)
        ids = torch.tensor([p + r.token_ids[: n - 1]])
        with torch.no_grad():
            raw = m.hf_model(ids).logits[0, len(p) - 1 :].float()
        seq = torch.tensor([p + r.token_ids])
        for k in range(len(r.token_ids)):
            got, engine_raw = rec.seen[(i, k)]
            if k < n:
                torch.testing.assert_close(engine_raw, raw[k], rtol=1e-5, atol=1e-5)
            base = raw[k] if k < n else engine_raw
            want = RepetitionPenaltyLogitsProcessor(1.3)(seq[:, : len(p) + k], base[None].clone())[0]
            out = r.token_ids[:k]
            want -= 1.5 * torch.bincount(torch.tensor(out, dtype=torch.long), minlength=want.shape[0]).clamp_max(1)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            top2 = want.topk(2).values
            if top2[0] - top2[1] > 1e-4:
                assert r.token_ids[k] == int(want.argmax())
            checked += 1
    assert checked == sum(len(r.token_ids) for r in rows) == 36


def test_penalised_rows_do_not_depend_on_the_batch_layout(tiny_rep):
    """Rows decoded together or each alone, teacher-forced (tests/forced.py): the same penalised
    logits, tokens and soft inputs (per-row counts; nothing shared between rows)."""
    m = tiny_rep
    prompts = [selar.format_prompt(m, p) for p in PROMPTS]
    solo = forced.SoloEngine(m.make_engine)
    kw = dict(presence_penalty=1.5, frequency_penalty=0.3, repetition_penalty=1.2, max_new_tokens=10)
    rep = forced.compare(m, solo, prompts, "selar", tol=1e-4, temperature=0.6, seeds=[1, 2, 3], **kw)
    print("\n", rep)
    rep.assert_ok()
