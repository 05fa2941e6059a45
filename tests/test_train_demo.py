"""selar.train.demo: the table, the seeds report, the plot, and the demo's mechanics at a tiny scale."""

from __future__ import annotations

import json
import statistics

import pytest

pytest.importorskip("peft")

from selar.train.demo import (  # noqa: E402
    PLOT,
    TABLE,
    DemoConfig,
    format_seeds,
    format_summary,
    plot_by_difficulty,
    run_demo,
)
from selar.train.rl import RLConfig, wilson_interval  # noqa: E402
from selar.train.sft import SFTConfig  # noqa: E402


def result(acc: float, n: int, steps: list[float]) -> dict:
    k = round(acc * n)
    return {
        "n": n,
        "accuracy": k / n,
        "accuracy_ci95": list(wilson_interval(k, n)),
        "mean_latent_steps": statistics.mean(steps),
        "mean_latent_steps_correct": statistics.mean(steps),
        "well_formed": 1.0,
        "by_ops": {str(i + 1): {"n": n // 4, "accuracy": acc, "mean_latent_steps": s} for i, s in enumerate(steps)},
    }


def summary(seed: int, sft_acc: float, rl_acc: float, sft_steps: list[float], rl_steps: list[float]) -> dict:
    return {
        "after_sft": result(sft_acc, 1000, sft_steps),
        "after_rl": result(rl_acc, 1000, rl_steps),
        "sft_seconds": 600.0,
        "rl_seconds": 300.0,
        "total_seconds": 960.0,
        "threads": 2,
        "config": {"seed": seed},
    }


def test_wilson_interval():
    lo, hi = wilson_interval(90, 100)
    # the textbook value for 90/100: 0.8256 - 0.9448
    assert (round(lo, 4), round(hi, 4)) == (0.8256, 0.9448)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_table_rows():
    s = summary(0, 0.9, 0.89, [4, 5, 6, 7], [1, 2, 3, 4])
    lines = format_summary(s).splitlines()
    assert lines[0].split() == ["accuracy", "(95%", "CI)", "mean", "latent", "steps", "by", "#ops", "(1/2/3/4)"]
    lo, hi = wilson_interval(900, 1000)
    assert lines[1].split() == ["after", "SFT", "0.900", f"({lo:.3f}-{hi:.3f})", "5.50", "4.00/5.00/6.00/7.00"]
    assert lines[2].split()[:3] == ["after", "RL", "0.890"] and lines[2].split()[-2:] == ["2.50", "1.00/2.00/3.00/4.00"]
    assert "latent steps -54.5%, accuracy -1.0 points" in lines[3] and "1000 held-out problems" in lines[3]


def test_seeds_report_and_plot(tmp_path):
    runs = [summary(0, 0.9, 0.9, [4, 5, 6, 7], [1, 2, 3, 4]), summary(1, 0.8, 0.82, [4, 5, 6, 7], [2, 3, 4, 5])]
    text = format_seeds(runs)
    d_steps = [100 * (2.5 - 5.5) / 5.5, 100 * (3.5 - 5.5) / 5.5]
    d_acc = [0.0, 2.0]
    assert text.splitlines()[1].split()[:6] == ["0", "0.900", "0.900", "+0.0", "5.50", "2.50"]
    assert text.splitlines()[2].split()[3] == "+2.0"
    last = text.splitlines()[-1]
    assert f"latent steps {statistics.mean(d_steps):+.1f}% (sd {statistics.stdev(d_steps):.1f})" in last
    assert f"accuracy {statistics.mean(d_acc):+.1f} points (sd {statistics.stdev(d_acc):.1f})" in last
    p = plot_by_difficulty(runs, tmp_path / "p.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_mechanics(tmp_path):
    """A tiny demo run writes the data, both adapters, the table, the plot and the summary."""
    import torch

    torch.set_num_threads(1)
    cfg = DemoConfig(
        n_train=40,
        n_eval=16,
        n_val=8,
        hidden=32,
        layers=1,
        max_latent=6,
        seed=3,
        sft=SFTConfig(
            cot_steps=2,
            steps_per_stage=1,
            budget_base=2,
            budget_per_step=1,
            budget_steps=2,
            batch_size=8,
            thought_weight=1.0,
        ),
        rl=RLConfig(steps=3, prompts_per_step=2, group_size=3, max_answer_tokens=6, val_every=1, val_tolerance=0.2),
    )
    logs: list[str] = []
    s = run_demo(tmp_path, cfg, log=logs.append)
    for f in (
        "train.jsonl",
        "val.jsonl",
        "eval.jsonl",
        "summary.json",
        TABLE,
        PLOT,
        "sft/selar_latent.json",
        "rl/selar_latent.json",
    ):
        assert (tmp_path / f).is_file(), f
    assert json.loads((tmp_path / "summary.json").read_text())["after_rl"]["n"] == 16
    assert (tmp_path / TABLE).read_text() == format_summary(s) + "\n"
    assert s["config"]["sft"]["seed"] == 3 and s["config"]["rl"]["seed"] == 3
    assert sum(v["n"] for v in s["after_sft"]["by_ops"].values()) == 16
    assert any("after SFT" in line for line in logs)
    # RL's checkpoint selection on the validation problems (kept out of training and of the held-out set)
    from selar.train.data import load_jsonl
    from selar.train.model import LatentReasoner
    from selar.train.rl import evaluate

    train, val, held = (load_jsonl(tmp_path / f) for f in ("train.jsonl", "val.jsonl", "eval.jsonl"))
    assert (len(train), len(val)) == (32, 8)
    assert not {e.question for e in val} & ({e.question for e in train} | {e.question for e in held})
    hist = s["rl_history"]
    vals = [h for h in hist if "val_accuracy" in h]
    assert [h["step"] for h in vals] == [1, 2, 3]
    kept = hist[-1]["kept_step"]
    start = next(line for line in logs if line.startswith("rl validation at the start"))
    start_acc = float(start.split("accuracy ")[1].split(",")[0])
    ok = [h for h in vals if h["val_accuracy"] >= start_acc - 0.2]
    if kept:  # the fewest latent steps among the checkpoints within the tolerance
        assert kept == min(ok, key=lambda h: (h["val_latent_steps"], -h["val_accuracy"], h["step"]))["step"]
        rl = evaluate(LatentReasoner.load(tmp_path / "rl"), val, max_answer_tokens=6)
        rec = next(h for h in vals if h["step"] == kept)
        assert (rl["accuracy"], rl["mean_latent_steps"]) == (rec["val_accuracy"], rec["val_latent_steps"])


def test_demo_refuses_a_validation_set_as_large_as_the_training_set(tmp_path):
    from selar.errors import ConfigError

    with pytest.raises(ConfigError, match="n_val"):
        run_demo(tmp_path, DemoConfig(n_train=40, n_val=40))


def test_rl_config_is_validated():
    from selar.errors import ConfigError

    for bad, match in (
        (dict(group_size=1), "group_size must be at least 2"),
        (dict(steps=0), "steps must be at least 1"),
        (dict(stop_temperature=0.0), "stop_temperature must be above 0"),
        (dict(stop_temperature_end=-1.0), "stop_temperature_end must be above 0"),
        (dict(val_every=-1), "val_every and val_tolerance"),
    ):
        with pytest.raises(ConfigError, match=match):
            RLConfig(**bad)
    RLConfig(stop_temperature_end=1.0, val_every=10)  # valid
