"""The official protocol by default: the prompt suffix verbatim (in run.json and every result),
GPQA in the paper's format, per-dataset options recorded per method, long token limits and a
truncation report for thinking models, the answer guard on non-thinking models."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import make_model, make_tokenizer
from test_grading import needs_data

from selar.cli import main
from selar.errors import ConfigError
from selar.eval import protocol
from selar.eval.datasets import DATASETS, DatasetError, DatasetSpec, register
from selar.eval.runner import EvalConfig, read_results

SUFFIX = "Please reason step by step, and make sure put your final answer within \\boxed{}."


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("protocol")
    for name, thinking in (("plain", False), ("thinking", True)):
        tok = make_tokenizer(thinking=thinking)
        make_model(tok, seed=1 if thinking else 0).save_pretrained(d / name)
        tok.save_pretrained(d / name)
    return d


def cli(args):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return res


def test_prompt_suffix_is_the_official_one_verbatim():
    assert protocol.PROMPT_SUFFIX == SUFFIX
    assert protocol.render_prompt("What is 2+2?") == "What is 2+2?\n" + SUFFIX
    assert protocol.render_prompt("Q {x}", "Solve: {question} Box it.") == "Solve: Q {x} Box it."


def test_paper_tau_table_is_the_protocols_and_applies_only_where_the_option_exists():
    assert not any(f == "tau" for f in DatasetSpec.__dataclass_fields__)  # not a dataset's property
    assert {d: o["tau"] for d, o in protocol.PAPER_OPTIONS.items()} == {
        "gsm8k": 0.5,
        "math500": 0.5,
        "gpqa": 0.7,
        "aime2024": 0.4,
        "aime2025": 0.5,
    }
    cfg = EvalConfig(model="m", datasets=["gpqa", "aime2024"], methods=["cot", "selar", "swir"])
    assert cfg.method_options("gpqa", "selar")["tau"] == 0.7
    assert cfg.method_options("aime2024", "selar")["tau"] == 0.4
    assert "tau" not in cfg.method_options("gpqa", "swir") and "tau" not in cfg.method_options("gpqa", "cot")
    cfg = EvalConfig(model="m", datasets=["gpqa"], methods=["selar"], sets={"selar.tau": 0.3})
    assert cfg.method_options("gpqa", "selar")["tau"] == 0.3  # --set wins


def test_token_limits_and_guard_defaults():
    cfg = EvalConfig(model="m", datasets=["gsm8k", "aime2025"], methods=["cot", "selar"])
    assert cfg.method_options("gsm8k", "selar", thinking=True)["max_new_tokens"] == 32768
    assert cfg.method_options("aime2025", "selar", thinking=True)["max_new_tokens"] == 38912
    plain = cfg.method_options("gsm8k", "selar", thinking=False)
    assert plain["max_new_tokens"] == 1024 and plain["soft_scope"] == "guarded"
    assert "soft_scope" not in cfg.method_options("gsm8k", "selar", thinking=True)  # </think> ends the scope
    assert "soft_scope" not in cfg.method_options("gsm8k", "selar", guard=False)  # an engine without the guard
    assert "soft_scope" not in cfg.method_options("gsm8k", "cot")  # never soft anyway
    cfg = EvalConfig(model="m", datasets=["gsm8k"], methods=["selar"], sets={"soft_scope": "all", "max_new_tokens": 64})
    assert cfg.method_options("gsm8k", "selar", thinking=True) == {
        "tau": 0.5,
        "max_new_tokens": 64,
        "soft_scope": "all",
    }


def test_dataset_registry_refuses_duplicates():
    with pytest.raises(DatasetError, match="already registered"):
        register(DATASETS["gsm8k"])


def test_prompt_template_must_hold_the_question():
    with pytest.raises(ConfigError, match="prompt_template"):
        EvalConfig(model="m", datasets=["gsm8k"], methods=["cot"], prompt_template="no placeholder")


@needs_data
def test_gpqa_prompts_in_the_paper_format_are_recorded(models, tmp_path):
    out = tmp_path / "gpqa"
    cli(
        [
            "eval",
            "--model",
            str(models / "plain"),
            "--datasets",
            "gpqa",
            "--limit",
            "2",
            "--methods",
            "cot,selar",
            "-n",
            "4",
            "--dtype",
            "float32",
            "--out",
            str(out),
        ]
    )
    recs = read_results(out / "results.jsonl")
    assert len(recs) == 4
    for r in recs:
        head, _, tail = r["prompt"].partition("\n\nA) ")
        assert head and "\nB) " in tail and "\nC) " in tail and "\nD) " in tail
        assert r["prompt"].endswith("\\boxed{A}, \\boxed{B}, \\boxed{C} or \\boxed{D}.\n" + SUFFIX)
    run = json.loads((out / "run.json").read_text())
    assert run["protocol"]["prompt_template"] == "{question}\n" + SUFFIX
    assert run["method_options"]["gpqa/selar"] == {"tau": 0.7, "max_new_tokens": 4, "soft_scope": "guarded"}
    assert run["method_options"]["gpqa/cot"] == {"max_new_tokens": 4}


@needs_data
def test_thinking_model_gets_long_limits_and_a_truncation_report(models, tmp_path):
    out = tmp_path / "think"
    cli(
        [
            "eval",
            "--model",
            str(models / "thinking"),
            "--datasets",
            "gsm8k,aime2025",
            "--limit",
            "1",
            "--methods",
            "cot,selar",
            "--dtype",
            "float32",
            "--out",
            str(out),
            "--schedule",
            "continuous",
        ]
    )
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["thinking"] is True
    assert run["method_options"]["gsm8k/selar"] == {"tau": 0.5, "max_new_tokens": 32768}
    assert run["method_options"]["aime2025/cot"] == {"max_new_tokens": 38912}
    recs = read_results(out / "results.jsonl")
    assert len(recs) == 4 and all(r["think_end"] is False for r in recs)  # the random model never closes
    assert any(r["finish_reason"] == "length" for r in recs)  # cut by the 512-position context
    cli(["report", str(out), "--html", "--no-plots"])
    md = (out / "report.md").read_text()
    assert "## Length, truncation and answer form" in md
    for r in recs:  # the report's shares, against the records
        row = next(line for line in md.splitlines() if line.startswith(f"| {r['dataset']} | {r['method']} |"))
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[2] == str(r["num_tokens"]) and cells[3] == str(r["num_tokens"])
        assert cells[4] == ("100.0" if r["finish_reason"] == "length" else "0.0")
        assert cells[5] == "100.0"
    html = (out / "report.html").read_text()
    assert "Length, truncation and answer form" in html and "cut by limit %" in html


def test_old_protocol_run_dirs_are_not_continued(models, tmp_path):
    data = tmp_path / "mini.jsonl"
    data.write_text(json.dumps({"question": "What is 1 + 1?", "answer": "2"}) + "\n")
    out = tmp_path / "run"
    args = [
        "eval",
        "--model",
        str(models / "plain"),
        "--data",
        str(data),
        "--methods",
        "cot",
        "-n",
        "2",
        "--dtype",
        "float32",
        "--out",
        str(out),
    ]
    cli(args)
    run = json.loads((out / "run.json").read_text())
    assert run["fingerprint"]["protocol"] == protocol.VERSION
    run["fingerprint"].pop("protocol")  # as written before the protocol was versioned
    (out / "run.json").write_text(json.dumps(run))
    res = CliRunner().invoke(main, [*args, "--resume"])
    assert res.exit_code == 2 and "another evaluation protocol" in res.output


def test_own_prompt_template_from_the_cli(models, tmp_path):
    data = tmp_path / "mini.jsonl"
    data.write_text(json.dumps({"question": "What is 1 + 1?", "answer": "2"}) + "\n")
    out = tmp_path / "own"
    args = ["eval", "--model", str(models / "plain"), "--data", str(data), "--methods", "cot", "-n", "2"]
    cli([*args, "--dtype", "float32", "--out", str(out), "--prompt-template", "Q: {question}\nA:"])
    assert read_results(out / "results.jsonl")[0]["prompt"] == "Q: What is 1 + 1?\nA:"
    assert json.loads((out / "run.json").read_text())["protocol"]["prompt_template"] == "Q: {question}\nA:"
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "bad"), "--prompt-template", "no slot"])
    assert res.exit_code == 2 and "{question}" in res.output


def test_guard_needs_an_engine_that_runs_it():
    from selar.engines.base import Capabilities
    from selar.eval.runner import run_options

    class OwnScheduler:  # an engine (e.g. a plugin) that cannot run the answer guard
        capabilities = Capabilities(stepwise=False, answer_guard=False)
        engine = "own"
        is_thinking = False

    cfg = EvalConfig(model="m", datasets=["gsm8k"], methods=["cot", "selar"])
    assert run_options(cfg, OwnScheduler(), ["gsm8k"])[("gsm8k", "selar")] == {"tau": 0.5, "max_new_tokens": 1024}
    cfg = EvalConfig(model="m", datasets=["gsm8k"], methods=["selar"], sets={"soft_scope": "guarded"})
    with pytest.raises(ConfigError, match="answer guard"):
        run_options(cfg, OwnScheduler(), ["gsm8k"])
