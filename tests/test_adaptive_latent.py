"""method="adaptive-latent" in the core decode path: the third input kind (hidden states)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from conftest import make_model, make_tokenizer  # noqa: E402
from fake import ScriptedEngine  # noqa: E402

import selar  # noqa: E402
from selar.config import SamplingConfig  # noqa: E402
from selar.decode import DecodeSession  # noqa: E402
from selar.engines import TransformersEngine  # noqa: E402
from selar.methods import get_method_spec  # noqa: E402
from selar.train.model import LatentReasoner  # noqa: E402

PROMPTS = ["Natalia sold clips", "How many clips did Natalia sell", "Weng earns"]


def trained_like(seed=0, max_latent=6, bias=(0.0, 0.0)):
    tok = make_tokenizer()
    r = LatentReasoner.from_base(
        make_model(tok, seed=seed), tok, lora=False, projection="mlp", max_latent=max_latent, seed=seed
    )
    torch.manual_seed(seed + 7)
    with torch.no_grad():
        for p in r.heads.parameters():
            p.add_(0.1 * torch.randn_like(p))
        r.heads.stop_head.bias.add_(torch.tensor(bias))
    return r.eval()


@pytest.mark.parametrize("seed,bias", [(0, (0.0, 0.0)), (1, (1.0, 0.0)), (2, (0.0, 3.0)), (3, (4.0, 0.0))])
def test_core_path_equals_the_training_rollout(seed, bias):
    r = trained_like(seed, bias=bias)
    want = r.generate([r.tokenizer.encode(p) for p in PROMPTS], greedy=True, max_answer_tokens=8)
    model = r.to_selar_model()
    res = selar.generate(
        model, PROMPTS, method="adaptive-latent", temperature=0, max_new_tokens=r.heads.max_latent + 10, batch_size=2
    )
    h = r.heads
    for w, got in zip(want, res):
        k = w["latent_steps"]
        assert got.num_soft_steps == k  # the reported number of latent steps
        assert got.token_ids[: k + 2] == [h.bot_id] + [h.lat_id] * k + [h.eot_id]
        ans = got.token_ids[k + 2 :]
        n = min(len(ans), len(w["answer_ids"]))
        assert n >= 1 and ans[:n] == w["answer_ids"][:n]
    assert {w["latent_steps"] for w in want} <= set(range(r.heads.max_latent + 1))


def test_max_latent_steps_option_and_limit():
    r = trained_like(0, bias=(6.0, 0.0))  # the head always says CONTINUE: the limit stops it
    model = r.to_selar_model()
    res = selar.generate(model, PROMPTS[:2], method="adaptive-latent", temperature=0, max_new_tokens=12)
    assert [x.num_soft_steps for x in res] == [6, 6]
    res = selar.generate(
        model, PROMPTS[:2], method="adaptive-latent", temperature=0, max_new_tokens=12, max_latent_steps=2
    )
    assert [x.num_soft_steps for x in res] == [2, 2]
    with pytest.raises(selar.ConfigError, match="stop_threshold"):
        selar.make_config("adaptive-latent", stop_threshold=1.5)


def test_hidden_input_is_the_projected_hidden_state():
    """One latent step through the engine equals a manual forward with project(h) as input."""
    r = trained_like(4, bias=(6.0, 0.0))
    model = r.to_selar_model()
    ids = r.tokenizer.encode(PROMPTS[0])
    eng = TransformersEngine(model.hf_model, pad_id=model.pad_id)
    eng.keep_hidden = True
    eng.add([ids + [r.heads.bot_id]])
    h = eng.hidden.clone()
    mix = selar.Mixture.of_tokens(torch.tensor([r.heads.lat_id]))
    mix.latent = torch.tensor([True])
    logits = eng.step(mix)
    with torch.no_grad():
        e = r.embed(torch.tensor([ids + [r.heads.bot_id]]))
        e = torch.cat([e, r.heads.project(h)[:, None]], 1)
        want = r.lm(inputs_embeds=e).logits[:, -1]
    torch.testing.assert_close(logits, want, atol=1e-4, rtol=1e-4)


def test_rows_joining_a_running_session_keep_their_hidden_states():
    r = trained_like(5, bias=(0.5, 0.0))
    model = r.to_selar_model()
    cfg = selar.make_config("adaptive-latent", temperature=0, max_new_tokens=14)
    alone = selar.generate(model, PROMPTS, config=cfg, batch_size=1)
    from selar.api import new_session

    s = new_session(model, cfg)
    enc = [selar.format_prompt(model, p) for p in PROMPTS]
    s.add(enc[:1], [0], [0])
    s.step()
    s.step()
    s.add(enc[1:], [1, 2], [0, 0])
    out = {}
    while s.size:
        for row in s.step():
            out[row.id] = row
    for i, a in enumerate(alone):
        assert out[i].token_ids == a.token_ids and sum(out[i].soft) == a.num_soft_steps


def test_errors_are_clear(tiny):
    with pytest.raises(selar.ConfigError, match="selar train"):
        selar.generate(tiny, "hello", method="adaptive-latent", max_new_tokens=4)
    r = trained_like(0)
    method = get_method_spec("adaptive-latent").factory(
        selar.make_config("adaptive-latent").options, r.to_selar_model().vocab_info()
    )
    eng = ScriptedEngine(torch.zeros(1, 3, 10))
    with pytest.raises(selar.ConfigError, match="does not support"):
        DecodeSession(eng, method, SamplingConfig(), stop_ids=[1], think_end=None, reasoning_scope=False)


def test_other_methods_do_not_ask_for_hidden_states(tiny, monkeypatch):
    seen = []
    orig = TransformersEngine._forward

    def spy(self, embeds, pos):
        seen.append(self.keep_hidden)
        return orig(self, embeds, pos)

    monkeypatch.setattr(TransformersEngine, "_forward", spy)
    selar.generate(tiny, "hello", method="selar", max_new_tokens=3, temperature=0)
    assert seen and not any(seen)


def test_load_model_reads_an_adapter_directory(tmp_path):
    r = trained_like(6)
    r.save(tmp_path / "ad")
    model = selar.load_model(str(tmp_path / "ad"), dtype="float32", device="cpu")
    a = selar.generate(model, PROMPTS, method="adaptive-latent", temperature=0, max_new_tokens=12)
    b = selar.generate(r.to_selar_model(), PROMPTS, method="adaptive-latent", temperature=0, max_new_tokens=12)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
