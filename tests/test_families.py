"""The architecture matrix on the transformers engine: for each family (tests/families.py), a
tiny random model where `cot` greedy equals transformers' own `generate`, and every logit the
engine computes, and every input SeLaR feeds, equals a float64 reference computed row by row
without any cache or padding, in a batch whose rows have different lengths, finish early and
join while others are running. Families the engine cannot drive are refused by name."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_tokenizer  # noqa: E402
from families import FAMILIES, WINDOW, make_family_model, token_rows  # noqa: E402
from test_selar_formula import reference_input, reference_p  # noqa: E402

import selar
from selar.decode import new_session
from selar.engines.transformers import TransformersEngine
from selar.errors import CapabilityError
from selar.methods import make_config

PROMPTS = [
    "How many clips did Natalia sell?",
    "Weng earns $12 an hour for babysitting. Yesterday she did 50 minutes. How much did she earn?",
    "2 + 3 =",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. Total?",
]
N = 24


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


_MODELS: dict = {}


def family_model(family, tok):
    if family not in _MODELS:
        _MODELS[family] = selar.wrap(make_family_model(family, tok), tok, name=family)
    return _MODELS[family]


def hf_greedy(model, enc, n, stop):
    """transformers' own generate on the same left-padded batch."""
    width = max(map(len, enc))
    pad = model.pad_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
    out = model.hf_model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=n,
        eos_token_id=stop,
        pad_token_id=pad,
        top_k=None,
        top_p=None,
        temperature=None,
    )
    rows = []
    for r in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(r) if t in stop), len(r))
        rows.append(r[:cut])
    return rows


def early_stop_token(free: list[list[int]]) -> int:
    """A token that ends some rows early and not others (taken from their free-running output)."""
    for t in free[0][2:12] + [t for r in free[1:] for t in r[2:12]]:
        ends = [t in r[:-1] for r in free]
        if any(ends) and not all(ends):
            return t
    raise AssertionError("no token ends some rows but not all")


@pytest.mark.arithmetic
@pytest.mark.parametrize("family", list(FAMILIES))
def test_cot_greedy_equals_generate(family, tok):
    model = copy.copy(family_model(family, tok))
    enc = [selar.format_prompt(model, p) for p in PROMPTS]
    assert min(map(len, enc)) > WINDOW  # sliding windows are crossed
    free = hf_greedy(model, enc, N, [-1])
    # generate pads finished rows on, so with a stop token each row is its free run cut there
    model.stop_ids = stop = [early_stop_token(free)]
    want = [r[: r.index(stop[0]) + 1] if stop[0] in r else r for r in free]
    assert any(len(r) < N for r in want) and any(len(r) == N for r in want)  # rows finish early
    got = [
        r.token_ids
        for r in selar.generate(
            model, PROMPTS, "cot", temperature=0, max_new_tokens=N, batch_size=4, prompt_token_ids=enc
        )
    ]
    assert got == want


class Recorder(TransformersEngine):
    """The engine, recording per row id each step's input row and logits."""

    def __init__(self, model, pad_id):
        super().__init__(model, pad_id=pad_id)
        self.rows: list[int] = []
        self.pending: list[list[int]] = []
        self.log: dict[int, list] = {}

    def _forward(self, embeds, position_ids):
        self._fed = embeds
        return super()._forward(embeds, position_ids)

    def add(self, prompts):
        logits = super().add(prompts)
        ids = self.pending.pop(0)
        self.log.update({i: [(None, row)] for i, row in zip(ids, logits)})
        self.rows += ids
        return logits

    def step(self, inputs):
        logits = super().step(inputs)
        for r, i in enumerate(self.rows):
            self.log[i].append((self._fed[r, 0].clone(), logits[r]))
        return logits

    def select(self, keep):
        super().select(keep)
        self.rows = [self.rows[k] for k in keep.tolist()]

    def reset(self):
        super().reset()
        self.rows = []


def run_schedule(model, cfg, enc, limits):
    """Rows 0 and 1 start, row 2 joins after 3 steps and row 3 after 5 more; `limits` are
    per-row max_new_tokens (some rows finish early)."""
    session = new_session(model, cfg)
    session.engine = eng = Recorder(model.hf_model, model.pad_id)
    out = {}

    def add(ids):
        eng.pending.append(ids)
        session.add([enc[i] for i in ids], ids, [0] * len(ids), max_new_tokens=[limits[i] for i in ids])

    def steps(k):
        for _ in range(k):
            if session.size:
                out.update({r.id: r for r in session.step()})

    add([0, 1])
    steps(3)
    add([2])
    steps(5)
    add([3])
    while session.size:
        steps(1)
    return [out[i] for i in range(len(enc))], eng.log


def median_entropy(model, enc, k):
    """The median normalised top-k entropy of the model's next-token distributions over the prompts."""
    with torch.no_grad():
        logits = torch.cat([model.hf_model(input_ids=torch.tensor([e])).logits[0] for e in enc]).float()
    top = torch.softmax(logits, -1).topk(k).values
    p = top / top.sum(-1, keepdim=True)
    return float((-(p * p.clamp_min(1e-30).log()).sum(-1) / math.log(k)).median())


@pytest.mark.arithmetic
@pytest.mark.parametrize("family", list(FAMILIES))
def test_selar_equals_float64_reference(family, tok):
    model = copy.copy(family_model(family, tok))
    model.stop_ids = []  # rows finish at their own limits (one early), not at a random model's EOS
    top_k, top_p, k, lam = 20, 0.95, 3, 1.0
    enc = [selar.format_prompt(model, p) for p in PROMPTS]
    tau = median_entropy(model, enc, k)  # so that the gate goes both ways on this model
    cfg = make_config(
        "selar",
        temperature=0,
        top_k=top_k,
        top_p=top_p,
        k=k,
        tau=tau,
        push_weight=lam,
        protect_symbols=False,
        max_new_tokens=N,
    )
    rows, log = run_schedule(model, cfg, enc, limits=[N, 6, N, 10])
    ref = copy.deepcopy(model.hf_model).double()
    with torch.no_grad():
        table = token_rows(ref, family, torch.arange(model.vocab_size))
    soft = hard = 0
    for i, (prompt, row) in enumerate(zip(enc, rows)):
        steps = log[i]
        assert len(steps) == len(row.token_ids)  # one logits row per emitted token
        fed = torch.stack([x.double() for x, _ in steps[1:]]) if len(steps) > 1 else table[:0]
        with torch.no_grad():
            x = torch.cat([token_rows(ref, family, torch.tensor(prompt)), fed])[None]
            want = ref(inputs_embeds=x).logits[0, len(prompt) - 1 :].float()
        got = torch.stack([lg for _, lg in steps])
        scale = max(1.0, float(want.abs().max()))
        assert torch.allclose(got, want, atol=2e-4 * scale, rtol=0), (i, float((got - want).abs().max()))
        for t in range(1, len(steps)):  # the input fed after emitting token t - 1
            p = reference_p(want[t - 1].double(), top_k, top_p)
            top = p.topk(k).values
            p_hat = top / top.sum()
            h = -sum(float(q) * math.log(float(q)) for q in p_hat if q > 0) / math.log(k)
            if abs(h - tau) < 1e-3:
                continue  # on the threshold: float32 and float64 may decide differently
            is_soft, vec = reference_input(p, table, k, tau, lam, row.token_ids[t - 1])
            assert is_soft == row.soft[t - 1], (i, t)
            assert torch.allclose(fed[t - 1], vec, atol=1e-4 * float(vec.abs().max())), (i, t)
            soft += is_soft
            hard += not is_soft
    assert [len(r.token_ids) for r in rows] == [N, 6, N, 10]
    assert soft > 0 and hard > 0  # both kinds of input in the batch


def test_probe_finds_each_token_path(tok):
    """Falcon-H1 multiplies token embeddings only on its input_ids path; the engine's rows carry
    that factor; every other family feeds its embedding module's rows as they are."""
    for family in FAMILIES:
        eng = TransformersEngine(family_model(family, tok).hf_model)
        want = family_model(family, tok).hf_model.config.embedding_multiplier if family == "falcon_h1" else 1.0
        assert eng.fit.embed_scale == want, family
        assert eng.fit.family == family_model(family, tok).hf_model.config.model_type


def test_refused_families_say_why(tok):
    """A family whose cache the engine cannot move (a pure Mamba model: its forward takes no
    attention mask over a KV cache) is refused when the engine is made, naming it."""
    from transformers import MambaConfig, MambaForCausalLM

    m = MambaForCausalLM(MambaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, state_size=8)).eval()
    model = selar.wrap(m, tok, name="mamba")
    with pytest.raises(CapabilityError, match="mamba family"):
        selar.generate(model, PROMPTS[:1], "selar", max_new_tokens=4)
