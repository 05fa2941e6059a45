"""`selar report` of several runs (issue 27, bugs 1 and 7): runs of one method made with different
settings are kept apart as labelled rows, each compared with the cot row of its own model; a
delta is over the problems both rows answered and says so when that is fewer; report.md names
the model. Run directories are written here as `selar eval` writes them (run.json from a real
EvalConfig), with results chosen so that every figure can be counted by hand."""

from __future__ import annotations

import dataclasses
import json

from click.testing import CliRunner

from selar.cli import main
from selar.eval.config import EvalConfig
from selar.eval.metrics import mcnemar_exact


def write_run(path, cfg: EvalConfig | None, outcomes: dict[str, list[int]], dataset: str = "gsm8k"):
    """A run directory: results.jsonl with one sample per problem (`outcomes`: method -> correct
    per problem p0, p1, ...) and, given `cfg`, the run.json `selar eval` writes for it."""
    path.mkdir(parents=True)
    with open(path / "results.jsonl", "w") as f:
        for method, oks in outcomes.items():
            for i, ok in enumerate(oks):
                rec = {"dataset": dataset, "problem_id": f"p{i}", "method": method, "sample": 0, "correct": bool(ok)}
                rec.update(pred="1", gold="1", num_tokens=10, num_soft_steps=0, finish_reason="stop", text="t")
                f.write(json.dumps(rec) + "\n")
    if cfg is not None:
        meta = {
            "config": dataclasses.asdict(cfg),
            "fingerprint": cfg.results_fingerprint(),
            "model": {"name": cfg.model, "source": "folder", "engine": cfg.engine, "dtype": "torch.float32"},
            "protocol": {"version": cfg.results_fingerprint()["protocol"]},
            "method_options": {f"{d}/{m}": cfg.method_options(d, m) for d in cfg.datasets for m in cfg.methods},
        }
        (path / "run.json").write_text(json.dumps(meta))
    return path


def report(tmp_path, *dirs):
    res = CliRunner().invoke(main, ["report", *map(str, dirs), "--out", str(tmp_path / "rep"), "--no-plots"])
    assert res.exit_code == 0, res.output
    rows = {s["method"]: s for s in json.loads((tmp_path / "rep" / "report.json").read_text())}
    md = (tmp_path / "rep" / "report.md").read_text()
    return res.output, rows, md


def cell(md: str, row: str) -> str:
    """The first data cell of the main table's row `row` in report.md."""
    return next(line.split(" | ")[1] for line in md.splitlines() if line.startswith(f"| {row} | "))


def paired_delta(a: list[int], cot: list[int]) -> tuple[float, int, float]:
    """(delta, paired problems, McNemar p) of `a` against `cot`, counted over the problems both have."""
    n = min(len(a), len(cot))
    b = sum(a[i] > cot[i] for i in range(n))
    c = sum(a[i] < cot[i] for i in range(n))
    return sum(a[i] - cot[i] for i in range(n)) / n, n, mcnemar_exact(b, c)


def test_runs_with_different_settings_are_kept_apart(tmp_path):
    """The README's `selar report runs/gsm8k runs/tau03`: selar at the default tau and at tau=0.3
    were merged into one `selar` row (the second run's shared problems dropped as duplicates)."""
    base = EvalConfig(model="m", datasets=["gsm8k"], methods=["cot", "selar"])
    tau03 = EvalConfig(model="m", datasets=["gsm8k"], methods=["selar"], sets={"selar.tau": 0.3})
    cot, sel, sel03 = [1, 1, 1, 1], [1, 1, 0, 1], [0, 0, 1, 1, 1, 0]
    a = write_run(tmp_path / "gsm8k", base, {"cot": cot, "selar": sel})
    b = write_run(tmp_path / "tau03", tau03, {"selar": sel03})
    out, rows, md = report(tmp_path, a, b)
    default_tau = base.method_options("gsm8k", "selar")["tau"]
    assert default_tau != 0.3
    low, default = "selar@tau=0.3", f"selar@tau={default_tau}"
    assert set(rows) == {"cot", low, default}
    assert low in out and default in out
    for row, oks in (("cot", cot), (default, sel), (low, sel03)):
        assert rows[row]["accuracy"] == sum(oks) / len(oks) and rows[row]["problems"] == len(oks)
    for row, oks in ((default, sel), (low, sel03)):
        delta, n, p = paired_delta(oks, cot)
        assert (rows[row]["delta_vs_cot"], rows[row]["paired"], rows[row]["p_vs_cot"]) == (delta, n, p)
    assert "on 4 paired" in cell(md, low)  # 6 problems, 4 of them paired with cot
    assert "paired" not in cell(md, default)
    note = next(line for line in md.splitlines() if line.startswith("`selar` was run with different settings"))
    assert f"`{default}`" in note and f"`{low}`" in note


def test_delta_is_over_the_paired_problems_and_says_so(tmp_path):
    """A report printed `cot 100.0 / selar 50.0 (+0.0, p=1.00)`: the delta over the one shared
    problem beside an accuracy over two, without saying so."""
    cfg = EvalConfig(model="m", datasets=["gsm8k"], methods=["cot", "selar"])
    run = write_run(tmp_path / "run", cfg, {"cot": [1], "selar": [1, 0]})
    _, rows, md = report(tmp_path, run)
    assert rows["cot"]["accuracy"] == 1.0 and rows["selar"]["accuracy"] == 0.5
    assert (rows["selar"]["delta_vs_cot"], rows["selar"]["paired"]) == (0.0, 1)
    assert cell(md, "selar").endswith("(+0.0, p=1.00, on 1 paired)")
    assert "(" not in cell(md, "cot")  # the baseline itself has no delta


def test_rows_are_compared_with_the_cot_of_their_own_model(tmp_path):
    one = EvalConfig(model="models/one", datasets=["gsm8k"], methods=["cot", "selar"])
    two = EvalConfig(model="models/two", datasets=["gsm8k"], methods=["cot", "selar"])
    res = {"one": ([1, 0, 0, 1], [1, 1, 0, 1]), "two": ([0, 0, 0, 1], [1, 1, 1, 0])}
    a = write_run(tmp_path / "a", one, dict(zip(("cot", "selar"), res["one"])))
    b = write_run(tmp_path / "b", two, dict(zip(("cot", "selar"), res["two"])))
    _, rows, md = report(tmp_path, a, b)
    assert set(rows) == {"cot@model=one", "cot@model=two", "selar@model=one", "selar@model=two"}
    for name, (cot, sel) in res.items():
        s = rows[f"selar@model={name}"]
        assert s["baseline"] == f"cot@model={name}"
        assert (s["delta_vs_cot"], s["paired"], s["p_vs_cot"]) == paired_delta(sel, cot)
        assert f"vs cot@model={name}" in cell(md, f"selar@model={name}")
    assert "Models: models/one (transformers, float32); models/two (transformers, float32)" in md


def test_report_names_the_model(tmp_path):
    cfg = EvalConfig(model="qwen2.5-coder-0.5b", datasets=["gsm8k"], methods=["cot", "selar"])
    run = write_run(tmp_path / "run", cfg, {"cot": [1, 0], "selar": [1, 1]})
    _, _, md = report(tmp_path, run)
    assert "\nModel: qwen2.5-coder-0.5b (transformers, float32)\n" in md
    bare = write_run(tmp_path / "bare", None, {"cot": [1], "selar": [0]})
    _, _, md = report(tmp_path / "x", bare)
    assert f"Model: not recorded (no run.json in {bare})" in md


def test_the_readme_example_labels_rows_by_what_differs(tmp_path):
    """`selar report runs/gsm8k runs/tau03` of the README's commands: the second run sets tau,
    temperature and the token limit; an option the first left unset shows the value it ran with."""
    from selar.methods import make_config

    first = EvalConfig(model="qwen2.5-coder-0.5b", datasets=["gsm8k"], methods=["cot", "selar"], limit=100)
    sets = {"selar.tau": 0.3, "temperature": 0, "max_new_tokens": 512}
    second = EvalConfig(model="qwen2.5-coder-0.5b", datasets=["gsm8k"], methods=["selar"], sets=sets)
    a = write_run(tmp_path / "gsm8k", first, {"cot": [1, 0, 1], "selar": [1, 1, 1]})
    b = write_run(tmp_path / "tau03", second, {"selar": [0, 1, 1]})
    _, rows, _ = report(tmp_path, a, b)
    used = first.method_options("gsm8k", "selar")
    temperature = make_config("selar", **used).sampling.temperature
    default = f"selar@tau={used['tau']},temperature={temperature},max_new_tokens={used['max_new_tokens']}"
    assert set(rows) == {"cot", default, "selar@tau=0.3,temperature=0,max_new_tokens=512"}
    assert all(s["baseline"] == "cot" and s["paired"] == 3 for m, s in rows.items() if m != "cot")


def test_runs_forced_at_two_budgets_get_their_own_rows_and_table(tmp_path):
    """Runs with the answer forced at 64 and at 128 tokens (`--set force_answer_at=B`) beside an
    unforced run, merged: each forced row is labelled with its budget and compared with the cot row
    forced at the same budget; the forced-budget table has a row per (dataset, method) and a column
    per budget, counted by hand; the within-a-budget table holds the unforced rows only."""
    free = EvalConfig(model="m", datasets=["gsm8k"], methods=["cot", "selar"])
    outcomes = {
        0: {"cot": [1, 1, 1, 1], "selar": [1, 1, 1, 0]},
        64: {"cot": [0, 0, 1, 0], "selar": [1, 0, 1, 0]},
        128: {"cot": [1, 0, 1, 0], "selar": [1, 1, 1, 0]},
    }
    dirs = [write_run(tmp_path / "free", free, outcomes[0])]
    for b in (64, 128):
        cfg = EvalConfig(model="m", datasets=["gsm8k"], methods=["cot", "selar"], sets={"force_answer_at": b})
        dirs.append(write_run(tmp_path / f"at{b}", cfg, outcomes[b]))
    _, rows, md = report(tmp_path, *dirs)
    labels = {"cot": (0, "cot"), "selar": (0, "selar")}
    labels.update({f"{m}@force_answer_at={b}": (b, m) for b in (64, 128) for m in ("cot", "selar")})
    assert set(rows) == set(labels)
    for row, (b, m) in labels.items():
        oks = outcomes[b][m]
        assert rows[row]["accuracy"] == sum(oks) / len(oks)
    assert rows["selar@force_answer_at=64"]["baseline"] == "cot@force_answer_at=64"
    assert (
        rows["selar@force_answer_at=64"]["delta_vs_cot"] == paired_delta(outcomes[64]["selar"], outcomes[64]["cot"])[0]
    )
    assert rows["selar"]["baseline"] == "cot"
    assert md.index("| selar@force_answer_at=64 |") < md.index("| selar@force_answer_at=128 |")  # numeric order
    section = md.split("## Accuracy with the answer forced at the budget")[1].split("## ")[0]
    assert "| dataset | method | @ 64 | @ 128 |" in section
    assert "| gsm8k | cot | 25.0 | 50.0 |" in section and "| gsm8k | selar | 50.0 | 75.0 |" in section
    within = md.split("## Accuracy within a token budget")[1].split("## ")[0]
    assert "| gsm8k | selar |" in within and "force_answer_at" not in within


def test_a_lone_forced_run_says_its_budget(tmp_path):
    cfg = EvalConfig(model="m", datasets=["gsm8k"], methods=["selar"], sets={"selar.force_answer_at": 256})
    _, rows, md = report(tmp_path, write_run(tmp_path / "run", cfg, {"selar": [1, 0]}))
    assert set(rows) == {"selar@force_answer_at=256"}
    assert "| gsm8k | selar | 50.0 |" in md.split("## Accuracy with the answer forced at the budget")[1]
    assert "## Accuracy within a token budget" not in md


def test_forced_runs_that_differ_in_another_setting_keep_it_in_their_budget_row(tmp_path):
    """Forced runs at two taus: each label names both settings; the budget table's rows are the
    labels without the budget (one per tau), each with its own cells."""
    outcomes = {(0.3, 64): [1, 0], (0.3, 128): [1, 1], (0.5, 64): [0, 0], (0.5, 128): [1, 0]}
    dirs = [
        write_run(
            tmp_path / f"t{tau}b{b}",
            EvalConfig(model="m", datasets=["gsm8k"], methods=["selar"], sets={"tau": tau, "force_answer_at": b}),
            {"selar": oks},
        )
        for (tau, b), oks in outcomes.items()
    ]
    _, rows, md = report(tmp_path, *dirs)
    assert set(rows) == {f"selar@tau={tau},force_answer_at={b}" for tau, b in outcomes}
    section = md.split("## Accuracy with the answer forced at the budget")[1].split("## ")[0]
    assert "| gsm8k | selar@tau=0.3 | 50.0 | 100.0 |" in section
    assert "| gsm8k | selar@tau=0.5 | 0.0 | 50.0 |" in section
