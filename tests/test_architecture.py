"""The shape of the package: registries, the engine contract, and regression tests for the bugs
found while reshaping it (issue 16, bugs 1, 4 and 7)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import selar
from selar.decode import new_session
from selar.engines import ENGINES, Capabilities, get_engine
from selar.engines.base import refuse_method
from selar.errors import CapabilityError, ConfigError
from selar.methods import METHODS, MethodSpec, get_method_spec, make_config, register
from selar.methods.cot import CoT, CoTOptions


# -- bug 1: a method option that shares a name with a sampling setting could never be set -------------
def test_soft_thinking_mixture_min_p_is_its_own_option():
    cfg = make_config("soft-thinking", mix_min_p=0.05, min_p=0.02)
    assert cfg.options.mix_min_p == 0.05  # the method's mixture filter
    assert cfg.sampling.min_p == 0.02  # the sampler's filter, a different setting


def test_register_refuses_an_option_named_like_a_sampling_setting():
    @dataclasses.dataclass
    class Clashing:
        temperature: float = 1.0

    with pytest.raises(ConfigError, match="temperature.*sampling setting"):
        register(MethodSpec("clashing", CoT, Clashing))
    assert "clashing" not in METHODS


def test_registries_refuse_duplicates():
    with pytest.raises(ConfigError, match="already registered"):
        register(MethodSpec("selar", CoT, CoTOptions))
    assert get_method_spec("selar").factory is not CoT
    with pytest.raises(ConfigError, match="already registered"):
        selar.engines.register_engine(selar.engines.EngineSpec("llamacpp", "x:y", Capabilities()))
    assert ENGINES["llamacpp"].entry != "x:y"


# -- bug 4: `selar analyze entropy --tau 0.45` decoded everything, then crashed in the plot -----------
def test_entropy_plot_marks_a_tau_outside_the_table(tiny, tmp_path):
    from selar.analysis import entropy

    summ = entropy.run(
        tiny, ["2 + 3 =", "How many clips?"], str(tmp_path), method="cot", tau=0.45, max_new_tokens=4, temperature=0
    )
    assert (tmp_path / "entropy.png").is_file()
    saved = json.loads((tmp_path / "entropy.json").read_text())["summary"]
    steps = [v for s in json.loads((tmp_path / "entropy.json").read_text())["sequences"] for v in s]
    assert saved["share_above"]["0.45"] == pytest.approx(sum(v > 0.45 for v in steps) / len(steps))
    assert summ["steps"] == len(steps) == 8


# -- bug 7: generate silently ignored a method unlike config.method, and zip truncated --------------------
def test_generate_refuses_a_method_unlike_its_config(tiny):
    cfg = make_config("cot", temperature=0, max_new_tokens=2)
    with pytest.raises(ConfigError, match="differs from config.method"):
        selar.generate(tiny, ["2 + 3 ="], "selar", config=cfg)
    assert selar.generate(tiny, ["2 + 3 ="], "cot", config=cfg)[0].method == "cot"
    assert selar.generate(tiny, ["2 + 3 ="], config=cfg)[0].method == "cot"


def test_generate_refuses_prompts_and_ids_of_different_lengths(tiny):
    ids = [selar.format_prompt(tiny, p) for p in ("a b", "c d")]
    with pytest.raises(ConfigError, match="prompts has 1 entries and prompt_token_ids 2"):
        selar.generate(tiny, ["a b"], "cot", prompt_token_ids=ids, max_new_tokens=2)
    out = selar.generate(tiny, [], "cot", prompt_token_ids=ids, max_new_tokens=2, temperature=0)
    assert [r.prompt_token_ids for r in out] == ids


# -- the engine contract ------------------------------------------------------------------------------
def test_methods_are_refused_by_capability_not_by_name():
    sparse_only = Capabilities(inputs=frozenset({"token", "sparse"}), stepwise=False)
    for name, spec in METHODS.items():
        if spec.inputs <= sparse_only.inputs:
            refuse_method("x", sparse_only, name)  # no error
        else:
            with pytest.raises(CapabilityError, match="the x engine cannot feed; (use|only) the .*engine"):
                refuse_method("x", sparse_only, name)
    with pytest.raises(CapabilityError, match="SwiR feeds a dense mixture"):
        refuse_method("x", sparse_only, "swir")


def test_a_model_says_what_its_engine_cannot_do(tiny):
    assert tiny.capabilities == get_engine("transformers").capabilities
    tiny.require("logit_lens", "the logit lens")  # the transformers engine has it
    cpu_only = dataclasses.replace(tiny.capabilities, logit_lens=False, streaming=False)
    other = type(tiny).__new__(type(tiny))
    other.__dict__.update(tiny.__dict__, capabilities=cpu_only, engine="other")
    with pytest.raises(CapabilityError, match="the logit lens needs logit lens, which the other engine does not"):
        other.require("logit_lens", "the logit lens")
    with pytest.raises(CapabilityError, match="streaming"):
        other.run([[1, 2]], make_config("cot"), [0], on_step=lambda *a: None)


def test_finish_reasons_are_named_in_one_place(tiny):
    from typing import get_args

    from selar.config import FinishReason
    from selar.decode import _CODE

    assert set(_CODE) == set(get_args(FinishReason)) - {"error"}  # "error" is the server's, never the loop's
    r = selar.generate(tiny, ["2 + 3 ="], "cot", temperature=0, max_new_tokens=3)[0]
    assert r.finish_reason in get_args(FinishReason)


def test_option_values_beyond_int64_and_non_finite_are_refused():
    with pytest.raises(ConfigError, match="seed is out of range"):
        make_config("selar", seed=1 << 63)
    with pytest.raises(ConfigError, match="temperature must be a finite number"):
        make_config("selar", temperature=float("inf"))
    with pytest.raises(ConfigError, match="temperature"):
        make_config("selar", temperature=10**30)
    assert make_config("selar", seed=(1 << 63) - 1).sampling.seed == (1 << 63) - 1
    torch.tensor([(1 << 63) - 1], dtype=torch.long)  # what the decode loop does with it


# -- docs/design.md: adding a method, adding an engine -------------------------------------------------
def _readme_block(heading: str) -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    section = text[text.index(heading) :]
    return section[section.index("```python\n") + 10 : section.index("\n```", section.index("```python\n"))]


def test_readme_example_method_runs_everywhere_a_method_name_is_taken(tiny):
    code = _readme_block("### Adding a method")
    try:
        exec(compile(code, "docs/design.md", "exec"), {})
        assert "top2" in METHODS
        r_soft = selar.generate(tiny, ["2 + 3 ="], "top2", tau=0.0, temperature=0, max_new_tokens=5, trace=True)[0]
        r_cot = selar.generate(tiny, ["2 + 3 ="], "top2", tau=1.0, temperature=0, max_new_tokens=5)[0]
        assert r_cot.token_ids == selar.generate(tiny, ["2 + 3 ="], "cot", temperature=0, max_new_tokens=5)[0].token_ids
        assert r_soft.num_soft_steps > 0
        with pytest.raises(ConfigError, match="tau must be in"):
            make_config("top2", tau=2.0)
        from selar.methods.base import Mixture

        # its soft input is exactly the average of the two most probable tokens' embeddings
        session = new_session(tiny, make_config("top2", tau=0.0, temperature=0, max_new_tokens=3))
        fed = []
        step = session.engine.step
        session.engine.step = lambda mix: (fed.append(mix), step(mix))[1]  # type: ignore[method-assign]
        session.add([selar.format_prompt(tiny, "2 + 3 =")], [0], [0])
        logits = session.logits.clone()
        session.step()
        top2 = logits.topk(2).indices[0]
        assert isinstance(fed[0], Mixture) and fed[0].ids[0].tolist() == top2.tolist()
        assert fed[0].weights[0].tolist() == [0.5, 0.5]
    finally:
        METHODS.pop("top2", None)


class _WrappedTransformers:
    """A toy engine entry for the README's "Adding an engine": the transformers engine under another
    name and with fewer capabilities (sparse mixtures only)."""

    @staticmethod
    def load(name, *, dtype="auto", device="auto", trust_remote_code=False, **options):
        from conftest import make_model, make_tokenizer

        from selar.engines.transformers import TransformersModel

        tok = make_tokenizer()

        class Mine(TransformersModel):
            engine = "mine"

        m = Mine(make_model(tok), tok, name=name, source="object")
        m.capabilities = get_engine("mine").capabilities
        return m

    @staticmethod
    def sizing(rows, positions):
        return {}


ENTRY = _WrappedTransformers()


def test_an_engine_plugs_in_with_one_registration():
    from selar.engines import EngineSpec, register_engine

    register_engine(EngineSpec("mine", f"{__name__}:ENTRY", Capabilities(inputs=frozenset({"token", "sparse"}))))
    try:
        model = selar.load_model("tiny", engine="mine")
        assert model.engine == "mine" and selar.engines.load_options("mine", 4, 64) == {}
        ids = [selar.format_prompt(model, "How many clips?")]
        ours = selar.generate(model, [], "cot", prompt_token_ids=ids, temperature=0, max_new_tokens=6)[0]
        ref = model.hf_model.generate(torch.tensor(ids), max_new_tokens=6, do_sample=False, pad_token_id=model.pad_id)[
            0, len(ids[0]) :
        ].tolist()
        assert ours.token_ids == ref[: len(ours.token_ids)]
        with pytest.raises(CapabilityError, match="SwiR feeds a dense mixture .* the mine engine cannot feed"):
            selar.generate(model, ["hi"], "swir", max_new_tokens=2)
    finally:
        ENGINES.pop("mine", None)
