"""`selar generate` on an engine without token streaming (issue 27, bug 6): the README's
`selar generate "..." --engine vllm` loaded vLLM for minutes, then failed with "token streaming
needs streaming, which the vllm engine does not have". Here the vllm registry entry is replaced
by a fake one with vLLM's capabilities (the transformers engine on a tiny model underneath), so
no vLLM is needed: a single prompt is generated and printed whole, and what the engine cannot do
is refused before anything is loaded."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner
from conftest import make_model, make_tokenizer

import selar
from selar.cli import main
from selar.engines import ENGINES, EngineSpec
from selar.engines.transformers import TransformersModel
from selar.methods import METHODS

VLLM_CAPABILITIES = ENGINES["vllm"].capabilities  # what the real entry declares: no streaming, no hidden states
LOADS: list[str] = []


def tiny_model(name: str) -> TransformersModel:
    tok = make_tokenizer()
    return TransformersModel(make_model(tok), tok, name=name, source="object", compile="off")


class FakeVllmModel(TransformersModel):
    """A model with the vllm entry's capabilities that, like vLLM, runs its own decode loop (`run`):
    here the transformers engine's, on the same weights."""

    engine = "vllm"

    def run(self, prompts, cfg, seeds, *, batch_size=16, on_step=None):
        self.check_method(cfg.method)
        if on_step is not None:
            self.require("streaming", "token streaming")  # what the vLLM engine's run does
        inner = TransformersModel(self.hf_model, self.tokenizer, name=self.name, source="object", compile="off")
        return inner.run(prompts, cfg, seeds, batch_size=batch_size, on_step=on_step)


class _FakeVllm:
    """The vllm entry's shape: load(...) -> Model, sizing(...) -> load options. Records every load."""

    @staticmethod
    def load(name, *, dtype="auto", device="auto", trust_remote_code=False, **options):
        LOADS.append(name)
        tok = make_tokenizer()
        model = FakeVllmModel(make_model(tok), tok, name=name, source="object", compile="off")
        model.capabilities = ENGINES["vllm"].capabilities
        return model

    @staticmethod
    def sizing(rows, positions):
        return {}


ENTRY = _FakeVllm()


@pytest.fixture
def fake_vllm(monkeypatch):
    assert not VLLM_CAPABILITIES.streaming  # the case of the bug
    monkeypatch.setitem(ENGINES, "vllm", EngineSpec("vllm", f"{__name__}:ENTRY", VLLM_CAPABILITIES))
    LOADS.clear()
    yield
    LOADS.clear()


def test_one_prompt_on_an_engine_without_streaming_prints_the_answer(fake_vllm):
    args = ["generate", "2 + 3 =", "--engine", "vllm", "--method", "selar", "-t", "0", "-n", "8", "--model", "tiny"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert LOADS == ["tiny"]
    # the same generation on the transformers engine, not streamed
    expected = selar.generate(tiny_model("tiny"), ["2 + 3 ="], "selar", temperature=0, max_new_tokens=8)[0]
    assert expected.text.strip()
    assert res.stdout == expected.text + "\n"
    assert f"[selar] {expected.num_tokens} tokens" in res.stderr


def test_one_prompt_streams_where_the_engine_can(monkeypatch):
    streaming = dataclasses.replace(VLLM_CAPABILITIES, streaming=True)
    monkeypatch.setitem(ENGINES, "vllm", EngineSpec("vllm", f"{__name__}:ENTRY", streaming))
    res = CliRunner().invoke(main, ["generate", "2 + 3 =", "--engine", "vllm", "-t", "0", "-n", "8", "--model", "t"])
    assert res.exit_code == 0, res.output
    expected = selar.generate(tiny_model("t"), ["2 + 3 ="], "selar", temperature=0, max_new_tokens=8)[0]
    assert res.stdout == expected.text + "\n"


@pytest.mark.parametrize("method", [m for m in METHODS if METHODS[m].inputs - VLLM_CAPABILITIES.inputs])
def test_a_method_the_engine_cannot_feed_is_refused_before_loading(fake_vllm, method):
    res = CliRunner().invoke(main, ["generate", "2 + 3 =", "--engine", "vllm", "--method", method, "--model", "m"])
    assert res.exit_code == 2
    assert "which the vllm engine cannot feed" in res.stderr and res.stderr.count("\n") == 1
    assert LOADS == []  # refused before the (slow) load
    res = CliRunner().invoke(main, ["generate", "hi", "--engine", "vllm", "--compare", f"cot,{method}", "--model", "m"])
    assert res.exit_code == 2 and "which the vllm engine cannot feed" in res.stderr
    assert LOADS == []


@pytest.mark.parametrize("method", [m for m in METHODS if METHODS[m].inputs - VLLM_CAPABILITIES.inputs])
def test_eval_and_serve_refuse_a_method_the_engine_cannot_feed_before_loading(fake_vllm, tmp_path, method):
    out = tmp_path / "run"
    args = ["eval", "--engine", "vllm", "--methods", f"cot,{method}", "--datasets", "gsm8k", "--model", "m"]
    res = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.output
    assert "which the vllm engine cannot feed" in res.stderr
    assert LOADS == [] and not out.exists()  # refused before the load and before the run directory
    res = CliRunner().invoke(main, ["serve", "--engine", "vllm", "--method", method, "--model", "m"])
    assert res.exit_code == 2 and "which the vllm engine cannot feed" in res.stderr, res.output
    assert LOADS == []
