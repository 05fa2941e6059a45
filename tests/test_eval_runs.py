"""Eval runs: SIGKILL mid-way + --resume gives exactly the results file of an uninterrupted run;
shards merge; a run directory of another config is refused; torn lines are skipped.

Records of soft methods are compared token for token across processes, shards, resumes and
schedules, so every run decodes one row per batch (`--batch-size 1`): the same kernels on the same
layout whatever the schedule, so the arithmetic is identical (free-running SeLaR is chaotic: rows
batched differently part after a few steps). The continuous schedule, which batches rows, is
compared on an engine that computes each row alone (tests/forced.py's SoloEngine)."""

from __future__ import annotations

import csv
import gzip
import json
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import make_model, make_tokenizer

from selar.cli import main
from selar.eval.runner import read_results


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    tok = make_tokenizer()
    make_model(tok).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    data = d / "mini.jsonl"
    with open(data, "w") as f:
        for i in range(10):
            f.write(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i), "id": f"q{i}"}) + "\n")
    return d


def eval_args(setup, out, *extra):
    return [
        "eval",
        "--model",
        str(setup / "model"),
        "--data",
        str(setup / "mini.jsonl"),
        "--methods",
        "cot,selar",
        "--samples",
        "2",
        "-n",
        "24",
        "--batch-size",
        "1",
        "--dtype",
        "float32",
        "--out",
        str(out),
        *extra,
    ]


def cli(args):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return res


def test_sigkill_and_resume_equals_uninterrupted(setup, tmp_path):
    full = tmp_path / "full"
    cli(eval_args(setup, full))
    expected = (full / "results.jsonl").read_bytes()
    assert expected.count(b"\n") == 10 * 2 * 2

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "selar", *eval_args(setup, killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = killed / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if results.is_file() and results.read_bytes().count(b"\n") >= 7:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = results.read_bytes()
    assert 0 < partial.count(b"\n") < 40, "the run was not killed mid-way"
    with open(results, "ab") as f:  # as if killed in the middle of a write
        f.write(b'{"dataset": "mini", "problem_id": "q9", "met')
    with pytest.warns(UserWarning, match="torn last line"):
        assert len(read_results(results)) == partial.count(b"\n")
    refused = CliRunner().invoke(main, eval_args(setup, killed))
    assert refused.exit_code == 2 and "--resume" in refused.output
    cli(eval_args(setup, killed, "--resume"))
    assert results.read_bytes() == expected


def test_refuses_a_different_config(setup, tmp_path):
    out = tmp_path / "run"
    cli(eval_args(setup, out))
    res = CliRunner().invoke(main, eval_args(setup, out, "--resume", "--set", "selar.tau=0.2"))
    assert res.exit_code == 2 and "different config" in res.output
    cli(eval_args(setup, out, "--set", "selar.tau=0.2", "--force"))


def test_shards_merge_into_the_single_run(setup, tmp_path):
    single = tmp_path / "single"
    cli(eval_args(setup, single))
    shards = tmp_path / "sharded"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "selar",
                *eval_args(setup, shards, "--num-shards", "2", "--shard-index", str(i)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    for p in procs:
        assert p.wait() == 0, p.stderr.read().decode()
    assert {f.name for f in shards.glob("results*.jsonl")} == {"results-0-of-2.jsonl", "results-1-of-2.jsonl"}
    key = lambda r: (r["problem_id"], r["method"], r["sample"])  # noqa: E731
    merged = sorted(
        read_results(shards / "results-0-of-2.jsonl") + read_results(shards / "results-1-of-2.jsonl"), key=key
    )
    assert merged == sorted(read_results(single / "results.jsonl"), key=key)
    res = cli(["report", str(shards), "--out", str(tmp_path / "rep")])
    assert "cot" in res.output and "selar" in res.output
    rep = tmp_path / "rep"
    assert (rep / "report.md").is_file() and (rep / "report.csv").is_file()
    assert (rep / "accuracy_vs_tokens.png").stat().st_size > 1000
    rows = (rep / "report.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("mini,cot,10,2,")
    # the merged report's figures are the single run's (its own report, written by `selar eval`) ...
    figures = ("problems", "samples", "accuracy", "ci_low", "ci_high", "tokens", "paired", "delta_vs_cot", "p_vs_cot")

    def report_rows(path):
        with open(path / "report.csv") as f:
            return {r["method"]: {k: r.get(k) for k in figures} for r in csv.DictReader(f)}

    single_rows = report_rows(single)
    assert set(single_rows) == {"cot", "selar"} and report_rows(rep) == single_rows
    # ... and those are the single run's results counted here: avg@2 over the 10 problems
    records = read_results(single / "results.jsonl")
    for method, row in single_rows.items():
        oks = [r["correct"] for r in records if r["method"] == method]
        assert len(oks) == 20 and float(row["accuracy"]) == pytest.approx(sum(oks) / 20)
    assert f"Model: {setup / 'model'} (transformers, float32)" in (rep / "report.md").read_text()


def test_bad_eval_input(setup, tmp_path):
    res = CliRunner().invoke(main, ["eval", "--datasets", "mmlu", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown dataset 'mmlu'" in res.output
    res = CliRunner().invoke(
        main,
        [
            "eval",
            "--data",
            str(setup / "mini.jsonl"),
            "--fields",
            "question=prompt",
            "--model",
            str(setup / "model"),
            "--out",
            str(tmp_path / "y"),
        ],
    )
    assert res.exit_code == 2 and "question=prompt" in res.output and "not found" in res.output
    res = CliRunner().invoke(main, ["eval", "--datasets", "gsm8k", "--set", "nosuch=1", "--out", str(tmp_path / "z")])
    assert res.exit_code == 2 and "nosuch" in res.output


def test_continuous_schedule_same_records_and_resume(setup, tmp_path):
    """Batches of 3 rows, fixed or continuous (rows joining as others finish), give the same records,
    also after a resume: on an engine that computes every row alone (the same arithmetic for any
    batch), so the records are compared exactly."""
    import forced

    import selar
    from selar.engines import TransformersEngine
    from selar.eval.config import EvalConfig
    from selar.eval.runner import run_eval

    model = selar.load_model(str(setup / "model"), dtype="float32", compile="off")
    hf, pad = model.hf_model, model.pad_id
    model.make_engine = lambda: forced.SoloEngine(lambda: TransformersEngine(hf, pad))

    def run(out, schedule, resume=False):
        cfg = EvalConfig(model=str(setup / "model"), datasets=[], methods=["cot", "selar"],
                         data=str(setup / "mini.jsonl"), samples=2, sets={"max_new_tokens": 24}, batch_size=3,
                         dtype="float32", schedule=schedule)  # fmt: skip
        return run_eval(cfg, str(out), resume=resume, model=model, progress=False)

    key = lambda r: (r["problem_id"], r["method"], r["sample"])  # noqa: E731
    fixed = read_results(run(tmp_path / "fixed", "fixed"))
    assert len(fixed) == 40 and sum(r["num_soft_steps"] for r in fixed) > 0
    path = run(tmp_path / "cont", "continuous")
    assert sorted(read_results(path), key=key) == sorted(fixed, key=key)
    # resume after losing the second half of the file: the same records again
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[: len(lines) // 2]))
    run(tmp_path / "cont", "continuous", resume=True)
    assert sorted(read_results(path), key=key) == sorted(fixed, key=key)


def test_a_run_kept_in_the_ledger_resumes_and_reports_as_the_original(setup, tmp_path):
    """scripts/lib/ledger.py: a run saved without its prompts and gold answers, restored on another
    machine (runs/ gone) and resumed, finishes with the original's records and gives its report."""
    ledger = [sys.executable, "scripts/lib/ledger.py"]
    full = tmp_path / "runs" / "full"
    cli(eval_args(setup, full))
    rows = read_results(full / "results.jsonl")

    part = tmp_path / "runs" / "part"  # a run stopped after 15 of its 40 rows
    part.mkdir()
    (part / "run.json").write_bytes((full / "run.json").read_bytes())
    (part / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:15]))
    subprocess.run([*ledger, "save", tmp_path / "runs", tmp_path / "kept", "part"], check=True)
    saved = [
        json.loads(x) for x in gzip.decompress((tmp_path / "kept/part/results.jsonl.gz").read_bytes()).splitlines()
    ]
    assert len(saved) == 15 and not any("prompt" in r or "gold" in r for r in saved)

    elsewhere = tmp_path / "elsewhere"
    subprocess.run([*ledger, "restore", elsewhere, tmp_path / "kept", "part"], check=True)
    cli(eval_args(setup, elsewhere / "part", "--resume"))
    resumed = read_results(elsewhere / "part" / "results.jsonl")
    keys = ("dataset", "problem_id", "method", "sample", "correct", "pred", "num_tokens", "num_soft_steps", "text")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in rows]

    subprocess.run([*ledger, "save", tmp_path / "runs", tmp_path / "kept", "full"], check=True)
    subprocess.run([*ledger, "restore", elsewhere, tmp_path / "kept", "full"], check=True)
    for d in (full, elsewhere / "full"):
        cli(["report", str(d), "--out", str(d / "report")])
    assert json.loads((full / "report/report.json").read_text()) == json.loads(
        (elsewhere / "full/report/report.json").read_text()
    )
