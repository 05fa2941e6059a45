"""The shape of the package: registries, the engine contract, and regression tests for the bugs
found while reshaping it (issue 16, bugs 1, 4 and 7)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import selar
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
