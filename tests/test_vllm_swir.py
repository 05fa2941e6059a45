"""SwiR's dense inputs in the vLLM plugin, without vLLM: the plugin's per-row state runs SwiR on
scripted logits (with a sparse SeLaR row in the same batch, and rows swapping places as vLLM's
persistent batch does), and its model-side `embed` must feed, row by row, what selar's decode loop
feeds for the same logits, embedded in float64 (`w @ E`, E the model's own scaled token path).
The embedding table: the weight times the probed scale where the token path is a scaled lookup,
else the model's own `embed_input_ids` over the vocabulary. max_switch_count is refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from fake import ScriptedEngine, peaked_logits, vocab

from selar.config import SamplingConfig
from selar.decode import decode
from selar.engines.vllm import request_args, split_server_defaults
from selar.engines.vllm import state as state_mod
from selar.engines.vllm.dense import embedding_table
from selar.engines.vllm.request import parse_request
from selar.engines.vllm.state import SoftState
from selar.errors import CapabilityError
from selar.methods import get_method_spec, make_config

V, D, THINK, END = 40, 8, 30, 31
OPTS = {"swir": {"protect_symbols": False, "window": 1}, "selar": {"protect_symbols": False}}


class TinyEmbedder(torch.nn.Module):
    """A model's token path: `embed_tokens` (padded past the vocabulary, as vLLM pads it), scaled
    like Gemma's; `normalise` makes it a lookup that is not a scaled row (the table fallback)."""

    def __init__(self, scale: float = 1.0, normalise: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.model = torch.nn.Module()
        self.model.embed_tokens = torch.nn.Embedding(V + 8, D)
        self.scale, self.normalise = scale, normalise

    def embed_input_ids(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.model.embed_tokens(ids) * self.scale
        return torch.nn.functional.normalize(e, dim=-1) if self.normalise else e

    def table64(self) -> torch.Tensor:
        return self.embed_input_ids(torch.arange(V)).double()


def unsure(top: int, m: int) -> torch.Tensor:
    z = peaked_logits(V, top, m=m)
    z[top] += 0.2
    return z


# rows (all with the same steps here, so the decode loop's batch is the plugin's):
# row 0 stays unsure (SwiR latent, dense inputs); row 1 gets sure at step 1 (latent -> explicit: a
# blend with </think>), plain at step 2, unsure again at step 3 (explicit -> latent: a blend with
# <think>); row 2 is SeLaR (sparse, every step unsure)
STEPS = 4
SWIR_ROWS = torch.stack([
    torch.stack([unsure(3, 4), unsure(5, 6), unsure(7, 6), unsure(2, 6)]),
    torch.stack([unsure(3, 4), unsure(9, 2), unsure(11, 2), unsure(12, 4)]),
])  # fmt: skip
SELAR_ROW = torch.stack([unsure(4, 4)] * STEPS)


class _Tok:
    def encode(self, text, add_special_tokens=False):
        return [20, 21]


def reference_inputs(name: str, logits: torch.Tensor, prompt: list[int]) -> tuple[list, list]:
    """(per step, the dense weights the decode loop feeds each row; each row's tokens)."""
    opts = make_config(name, **OPTS[name]).options
    method = get_method_spec(name).factory(opts, vocab(V, THINK, END, tokenizer=_Tok()))
    eng = ScriptedEngine(logits)
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=STEPS, top_k=0, top_p=1.0)
    rows = decode(eng, [prompt] * logits.shape[0], method, cfg, seeds=[0] * logits.shape[0], stop_ids=[999],
                  think_end=END, think_start=THINK, reasoning_scope=True)  # fmt: skip
    fed = []
    for _, mix in eng.fed:
        w = mix.weights.double() if mix.ids is None else torch.zeros(mix.weights.shape[0], V, dtype=torch.float64)
        if mix.ids is not None:
            w.scatter_add_(1, mix.ids, mix.weights.double())
        fed.append(w)
    return fed, [r.token_ids for r in rows]


def _params(extra):
    return SimpleNamespace(temperature=0, top_p=1.0, top_k=-1, min_p=0.0, max_tokens=STEPS, seed=None, extra_args=extra,
                           presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0)  # fmt: skip


@pytest.mark.parametrize("scale", [1.0, 3.5])
def test_the_plugin_feeds_swirs_dense_inputs(monkeypatch, scale):
    model = TinyEmbedder(scale)
    table = model.table64()
    prompt = [1, THINK]
    want_swir, tok_swir = reference_inputs("swir", SWIR_ROWS, prompt)
    want_selar, tok_selar = reference_inputs("selar", SELAR_ROW[None], prompt)
    st = SoftState(4, torch.device("cpu"), vocab(V, THINK, END, tokenizer=_Tok()))
    # vLLM's rows: 0 swir (row 0), 1 selar, 2 swir (row 1); swapped after step 1 (rows 0 and 2)
    where = {0: ("swir", 0), 1: ("selar", 0), 2: ("swir", 1)}
    for i, (name, _) in where.items():
        st.add(i, _params(request_args(name, OPTS[name])), prompt, [])
    soft_rows = []
    for k in range(STEPS):
        logits = torch.stack([(SWIR_ROWS if n == "swir" else SELAR_ROW[None])[j, k] for n, j in where.values()])
        st.t["last_pos"][:3] = st.t["prompt_len"][:3] + st.t["step"][:3] - 1  # each forward reached its row's end
        toks = st.apply(logits.clone()).argmax(-1)
        soft_rows.append(int(st.dense.count))
        if k == 1:  # vLLM's persistent batch swaps rows 0 and 2 before the next forward
            st.move(0, 2, swap=True)
            where = {0: where[2], 1: where[1], 2: where[0]}
            toks = toks[[2, 1, 0]]
        # the next forward: one token per row, at the position after its last one
        positions = st.t["prompt_len"][:3] + st.t["step"][:3] - 1
        monkeypatch.setattr(state_mod, "_query_start_loc", lambda: torch.arange(4))
        with torch.no_grad():
            emb = st.embed(model, toks, positions).double()
        for i, (name, j) in where.items():
            assert int(toks[i]) == (tok_swir if name == "swir" else tok_selar)[j][k]
            fed = want_swir if name == "swir" else want_selar
            if k < len(fed):  # the decode loop feeds no input after the last step
                want = fed[k][j] @ table
                assert torch.allclose(emb[i], want, atol=1e-5), (k, name, j, (emb[i] - want).abs().max())
    # the dense block holds only the rows that went soft: both SwiR rows but at step 2 (row 1 plain)
    assert soft_rows == [2, 2, 1, 2], soft_rows
    assert st.record(0)["soft"] == [True, True, False, True]  # swir row 1 (at index 0 since the swap)
    assert st.record(2)["soft"] == [True] * STEPS


def test_the_embedding_table_is_the_models_token_path():
    scaled = TinyEmbedder(3.5)
    table, s = embedding_table(scaled, V)
    assert s == pytest.approx(3.5) and table.data_ptr() == scaled.model.embed_tokens.weight.data_ptr()  # no copy
    assert torch.allclose(table.double() * s, scaled.table64(), atol=1e-6)
    plain = TinyEmbedder(1.0)
    assert embedding_table(plain, V)[1] == 1.0
    other = TinyEmbedder(2.0, normalise=True)  # not a scaled row: the model's own path over the vocabulary
    table, s = embedding_table(other, V)
    assert s == 1.0 and table.shape == (V, D) and torch.equal(table.double(), other.table64())


def test_max_switch_count_is_refused_in_one_sentence(monkeypatch):
    monkeypatch.delenv("SELAR_VLLM_DEFAULTS", raising=False)
    parse_request(_params(request_args("swir")))  # SwiR itself is served
    with pytest.raises(CapabilityError, match="max_switch_count is not supported on the vLLM engine.*cannot"):
        parse_request(_params(request_args("swir", {"max_switch_count": 2})))
    with pytest.raises(CapabilityError, match="max_switch_count is not supported on the vLLM engine"):
        split_server_defaults("swir", {"max_switch_count": 1})
