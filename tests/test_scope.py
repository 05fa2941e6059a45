"""The soft-scope rules (selar.scope), owned by the decode layer and applied after every method's
step on every engine: an uncertain step that emits </think> feeds E(</think>) and no soft input
follows; a prompt that closes its think block starts outside the scope. Scripted logits through
the shared decode loop and through the vLLM plugin's per-row state (no vLLM needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from fake import ScriptedEngine, peaked_logits, vocab

from selar.config import SamplingConfig
from selar.decode import decode
from selar.methods import get_method_spec, make_config

V, THINK, END = 40, 30, 31
SOFT_METHODS = ["selar", "selar-no-gate", "selar-no-push", "soft-thinking", "swir"]
OPTS = {"selar": {"protect_symbols": False}, "selar-no-gate": {"protect_symbols": False},
        "selar-no-push": {"protect_symbols": False}, "swir": {"protect_symbols": False}}  # fmt: skip


def uncertain(top: int, m: int = 4) -> torch.Tensor:
    """Uniform over `m` tokens from `top`, `top` a little ahead: greedy emits it, every method is unsure."""
    z = peaked_logits(V, top, m=m)
    z[top] += 0.2
    return z


# step 0 unsure among 4 (SwiR's reference entropy); step 1 emits </think> unsure among 8 (more
# uncertain: SwiR stays latent, Soft Thinking's top-1 is </think>); then unsure answer steps
STEPS = [uncertain(5), uncertain(END - 7, m=8), uncertain(5), uncertain(5), uncertain(5)]
STEPS[1][END] = STEPS[1][END - 7] + 0.1  # </think> is the top token, among 8 near-equal ones


class _Tok:
    def encode(self, text, add_special_tokens=False):
        return [20, 21]


def method(name: str):
    opts = make_config(name, **OPTS.get(name, {})).options
    return get_method_spec(name).factory(opts, vocab(V, THINK, END, tokenizer=_Tok()))


def run(name: str, prompt: list[int], think_end, steps=STEPS):
    eng = ScriptedEngine(torch.stack(steps)[None])
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=len(steps), top_k=0, top_p=1.0)
    (row,) = decode(eng, [prompt], method(name), cfg, seeds=[0], stop_ids=[999], think_end=think_end,
                    think_start=THINK, reasoning_scope=True)  # fmt: skip
    return row, [m for _, m in eng.fed]


def dense(mix) -> torch.Tensor:
    if mix.ids is None:
        return mix.weights[0]
    return torch.zeros(V).index_add_(0, mix.ids[0], mix.weights[0].float())


@pytest.mark.parametrize("name", SOFT_METHODS)
def test_an_uncertain_think_end_feeds_the_token_and_closes_the_scope(name):
    row, fed = run(name, [1, THINK], END)
    assert row.token_ids[1] == END
    assert row.soft[0] and row.soft[1:] == [False] * 4
    assert torch.equal(dense(fed[1]), torch.nn.functional.one_hot(torch.tensor(END), V).float())
    for t, mix in enumerate(fed[2:], 2):  # every later input is the emitted token
        assert torch.equal(dense(mix), torch.nn.functional.one_hot(torch.tensor(row.token_ids[t]), V).float())
    # the step was uncertain: without a </think> to close on (no think token), the method goes soft there
    free, fed_free = run(name, [1], None)
    assert free.token_ids[1] == END and free.soft[1]
    assert not torch.equal(dense(fed_free[1]), dense(fed[1]))


@pytest.mark.parametrize("name", SOFT_METHODS)
def test_a_closed_think_prompt_feeds_no_soft_input(name):
    """A thinking model's template with thinking off: `<think>\\n\\n</think>\\n\\n` ends the prompt."""
    row, fed = run(name, [1, THINK, 7, END, 7], END, steps=[uncertain(5)] * 5)
    assert row.soft == [False] * 5
    assert all(int(dense(m).count_nonzero()) == 1 for m in fed)
    open_row, _ = run(name, [1, THINK, 7], END, steps=[uncertain(5)] * 5)
    assert any(open_row.soft)


# -- the same rules in the vLLM plugin's per-row state ----------------------------------------
def _params(extra):
    return SimpleNamespace(temperature=0, top_p=1.0, top_k=-1, min_p=0.0, max_tokens=8, seed=None, extra_args=extra,
                           presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0)  # fmt: skip


def _plugin_rows(name: str, prompts: list[list[int]], steps=STEPS) -> list[dict]:
    from selar.engines.vllm import request_args
    from selar.engines.vllm.state import SoftState

    n = len(prompts)
    st = SoftState(n, torch.device("cpu"), vocab(V, THINK, END, tokenizer=_Tok()))
    for i, p in enumerate(prompts):
        st.add(i, _params(request_args(name, OPTS.get(name, {}))), p, [])
    fed = []
    for z in steps:
        st.t["last_pos"][:n] = st.t["prompt_len"][:n] + st.t["step"][:n] - 1  # each forward reached its row's end
        tok = st.apply(z.expand(n, V).clone()).argmax(-1)
        # what the model's next forward embeds per row: the stored mixture where one is pending, else the token
        pend = st.t["pend_pos"][:n] >= 0
        w = torch.zeros(n, V).scatter_add_(1, st.t["pend_ids"][:n], st.t["pend_w"][:n])
        slot = st.t["pend_dense"][:n]
        if st.dense.count:  # SwiR's mixtures over the whole vocabulary
            w = torch.where((slot >= 0)[:, None], torch.cat(st.dense.parts)[slot.clamp_min(0)], w)
        fed.append(torch.where(pend[:, None], w, torch.nn.functional.one_hot(tok, V).float()))
    return [{"soft": st.record(i)["soft"], "tokens": st.t["rec_tok"][i, : len(steps)].tolist(),
             "fed": [f[i] for f in fed]} for i in range(n)]  # fmt: skip


@pytest.mark.parametrize("name", SOFT_METHODS)
def test_the_vllm_state_keeps_the_same_scope_rules(name):
    """Bug 1 in the plugin (an uncertain </think> step fed a mixture) and bug 2 (a closed-think prompt
    started inside the scope): the plugin's state calls the decode layer's rules."""
    opened, closed = _plugin_rows(name, [[1, THINK], [1, THINK, 7, END, 7]])
    assert opened["tokens"][1] == END and opened["soft"][0] and opened["soft"][1:] == [False] * 4
    one = torch.nn.functional.one_hot(torch.tensor(opened["tokens"]), V).float()
    assert all(torch.equal(f, o) for f, o in zip(opened["fed"][1:], one[1:]))  # E(</think>), then tokens
    assert closed["soft"] == [False] * 5
