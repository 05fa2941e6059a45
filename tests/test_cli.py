"""The CLI end to end on a tiny model saved as a folder (the folder-loading path)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import make_model, make_tokenizer
from selar.cli import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-model")
    tok = make_tokenizer(thinking=True)
    make_model(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def test_generate_json(folder):
    res = CliRunner().invoke(main, ["generate", "How many clips?", "--model", folder, "--json", "-n", "8",
                                    "--temperature", "0", "--tau", "0.3", "--trace", "--dtype", "float32"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["method"] == "selar" and out["num_tokens"] == len(out["token_ids"]) <= 8
    assert len(out["trace"]) == out["num_tokens"]
    assert out["num_soft_steps"] == sum(t["soft"] for t in out["trace"])
    from transformers import AutoTokenizer
    think = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("<think>")
    assert out["prompt_token_ids"][-1] == think  # the chat template opened the reasoning


def test_generate_streams_text(folder):
    res = CliRunner().invoke(main, ["generate", "2 + 3 =", "--model", folder, "-n", "6", "--method", "cot",
                                    "--temperature", "0"])
    assert res.exit_code == 0, res.output
    assert "[cot] 6 tokens, 0 soft steps, finish: length" in res.output


def test_compare_side_by_side(folder):
    res = CliRunner().invoke(main, ["generate", "2 + 3 =", "--model", folder, "-n", "5", "--compare",
                                    "cot,selar,swir", "--tau", "0.2", "--temperature", "0"])
    assert res.exit_code == 0, res.output
    for m in ("[cot]", "[selar]", "[swir]"):
        assert m in res.output


def test_set_option_and_unused_option(folder):
    ok = CliRunner().invoke(main, ["generate", "hi", "--model", folder, "-n", "3", "--set", "gate_scope=batch",
                                   "--json"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(main, ["generate", "hi", "--model", folder, "--compare", "cot,soft-thinking",
                                    "--tau", "0.3"])
    assert bad.exit_code == 2 and "apply to none of" in bad.output


def test_models_list():
    res = CliRunner().invoke(main, ["models", "list", "--json"])
    rows = json.loads(res.output)
    assert {r["name"] for r in rows} >= {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    assert [r["name"] for r in rows if r["default"]] == ["qwen2.5-coder-0.5b"]
