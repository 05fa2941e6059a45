"""`selar train sft / rl / eval` on a very small configuration (the mechanics, not the figures)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("peft")

from selar.cli import main  # noqa: E402

SMALL = ["--n-train", "40", "--n-eval", "12", "--max-steps", "2", "--threads", "1"]


def test_sft_rl_eval(tmp_path):
    run = CliRunner()
    sft = tmp_path / "sft"
    r = run.invoke(
        main,
        [
            "train",
            "sft",
            "--out",
            str(sft),
            "--cot-steps",
            "3",
            "--steps-per-stage",
            "2",
            "--hidden",
            "32",
            "--layers",
            "1",
            "--batch-size",
            "8",
            "--max-latent",
            "4",
            *SMALL,
        ],
    )
    assert r.exit_code == 0, r.output
    assert "after SFT: accuracy" in r.output and "mean latent steps" in r.output
    meta = json.loads((sft / "selar_latent.json").read_text())
    assert meta["lora"] is False and meta["max_latent"] == 4 and (sft / "base" / "config.json").is_file()
    rl = tmp_path / "rl"
    r = run.invoke(
        main,
        [
            "train",
            "rl",
            "--adapter",
            str(sft),
            "--out",
            str(rl),
            "--steps",
            "2",
            "--prompts-per-step",
            "2",
            "--group-size",
            "3",
            *SMALL,
        ],
    )
    assert r.exit_code == 0, r.output
    assert "before RL: accuracy" in r.output and "after RL: accuracy" in r.output
    r = run.invoke(
        main, ["train", "eval", "--adapter", str(rl), "--n-eval", "12", "--max-steps", "2", "--threads", "1"]
    )
    assert r.exit_code == 0 and "accuracy" in r.output
    # the adapter is a model for the core path
    r = run.invoke(
        main,
        [
            "generate",
            "3 + 4 =",
            "--model",
            str(rl),
            "--method",
            "adaptive-latent",
            "--temperature",
            "0",
            "-n",
            "12",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)  # (transformers 5 draws a loading bar on stderr)
    assert out["method"] == "adaptive-latent" and out["num_soft_steps"] <= 4


def test_errors(tmp_path):
    run = CliRunner()
    r = run.invoke(main, ["train", "rl", "--adapter", str(tmp_path), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "not a latent-reasoning adapter" in r.output
    r = run.invoke(main, ["train", "sft", "--out", str(tmp_path / "y"), "--data", str(tmp_path / "none.jsonl")])
    assert r.exit_code == 2 and "no such data file" in r.output


def test_eval_scores_the_held_out_problems_sft_reports_on(tmp_path):
    """Bug 6 (issue 16): with --data FILE and no --eval-data, `train eval` scored a tenth of --n-eval
    (the tail of a split it made from n_train=0), not the held-out problems sft and rl report on."""
    from selar.train.data import save_jsonl, synthetic_arithmetic

    data = tmp_path / "d.jsonl"
    save_jsonl(synthetic_arithmetic(60, max_steps=2, seed=4), data)
    run = CliRunner()
    common = ["--data", str(data), "--n-eval", "12", "--threads", "1"]
    r = run.invoke(
        main,
        [
            "train",
            "sft",
            "--out",
            str(tmp_path / "sft"),
            "--n-train",
            "40",
            "--cot-steps",
            "2",
            "--steps-per-stage",
            "1",
            "--budget-steps",
            "1",
            "--hidden",
            "32",
            "--layers",
            "1",
            "--max-latent",
            "4",
            *common,
        ],
    )
    assert r.exit_code == 0, r.output
    sft_line = next(line for line in r.output.splitlines() if line.startswith("after SFT:"))
    assert "on 12 held-out problems" in sft_line
    r = run.invoke(main, ["train", "eval", "--adapter", str(tmp_path / "sft"), *common])
    assert r.exit_code == 0, r.output
    eval_line = r.output.strip().splitlines()[-1]
    assert "on 12 held-out problems" in eval_line
    # the same problems, the same model: the same figures
    assert eval_line.split(": ", 1)[1] == sft_line.split(": ", 1)[1]
