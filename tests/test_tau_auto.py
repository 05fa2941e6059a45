"""tau=auto (SeLaR's gate calibrated without labels): the choice on hand-made entropies, and on a
tiny model: the calibration pass is SeLaR with its gate closed, so a run at the chosen tau follows
that trace exactly up to its first soft step, which falls on the first eligible step above tau;
run.json and the report record the choice; tau=auto is refused where it cannot be calibrated."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import make_model, make_tokenizer

import selar
from selar.cli import main
from selar.errors import ConfigError
from selar.eval.calibrate import calibrate_tau, pick_tau


def test_pick_tau_puts_the_target_share_above_it():
    # 10 steps, 6 eligible (-1: out of scope or a protected symbol)
    ent = [[0.9, -1, 0.2, 0.8], [0.7, 0.1, -1, -1, 0.95, -1]]
    r = pick_tau(ent, 0.2)  # 2 of 10 steps: 0.95 and 0.9 above tau = 0.8
    assert r["tau"] == 0.8 and r["soft_share"] == pytest.approx(0.2) and r["eligible_share"] == pytest.approx(0.6)
    assert pick_tau(ent, 0.3)["tau"] == 0.7 and pick_tau(ent, 0.3)["soft_share"] == pytest.approx(0.3)
    assert pick_tau(ent, 0.9) == {**pick_tau(ent, 0.9), "tau": 0.0, "soft_share": pytest.approx(0.6)}  # all eligible
    assert pick_tau(ent, 0.0)["tau"] == 1.0 and pick_tau(ent, 0.0)["soft_share"] == 0.0


def test_bad_tau_values_are_refused():
    with pytest.raises(ConfigError, match="tau must be a number in \\[0, 1\\] or auto"):
        selar.make_config("selar", tau="high")
    with pytest.raises(ConfigError, match="soft_target"):
        selar.make_config("selar", tau="auto", soft_target=1.5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tau")
    tok = make_tokenizer()
    make_model(tok).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    with open(d / "mini.jsonl", "w") as f:
        for i in range(6):
            f.write(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i), "id": f"q{i}"}) + "\n")
    return d


def test_calibrated_tau_reproduces_the_trace_up_to_the_first_soft_step(tiny):
    model = selar.load_model(str(tiny / "model"), dtype="float32", compile="off")
    prompts = [f"What is {i} + {i}?" for i in range(6)]
    ids = [selar.format_prompt(model, p) for p in prompts]
    opts = {"temperature": 0.0, "max_new_tokens": 24, "soft_target": 0.15, "k": 3}
    # one row per batch: the trace and the check run the same kernels on the same layout
    traces = []
    for i in range(6):
        from selar.decode import new_session, run_continuous
        from selar.eval.calibrate import _Eligible

        s = new_session(model, selar.make_config("selar", **{**opts, "tau": 1.0}))
        s.method = _Eligible(s.method)
        traces.append(next(run_continuous(s, [ids[i]], [0], 1)).entropy)
    res = calibrate_tau(model, "selar", ids, [0] * 6, {**opts, "tau": "auto"}, batch_size=1)
    assert res["tau"] == pick_tau(traces, 0.15)["tau"] and res["prompts"] == 6
    tau = res["tau"]
    assert 0 < tau < 1 and res["soft_share"] > 0
    run = selar.generate(model, prompts, "selar", batch_size=1, trace=True, **{**opts, "tau": tau})
    firsts = 0
    for tr, r in zip(traces, run):
        first = next((j for j, h in enumerate(tr) if h > tau), None)
        soft = [t["soft"] for t in r.trace]
        assert (True in soft) == (first is not None and first < len(soft))
        if first is not None and first < len(soft):
            assert soft.index(True) == first
            seen = [(t["entropy"], h) for t, h in zip(r.trace[: first + 1], tr) if h >= 0]  # -1: not eligible
            assert [a for a, _ in seen] == pytest.approx([h for _, h in seen], abs=1e-6)
            firsts += 1
    assert firsts >= 2


def test_eval_with_tau_auto_records_its_choice(tiny, tmp_path):
    args = ["eval", "--model", str(tiny / "model"), "--data", str(tiny / "mini.jsonl"), "--methods", "cot,selar"]
    args += ["--set", "tau=auto", "--set", "soft_target=0.2", "-n", "16", "--dtype", "float32", "--out"]
    res = CliRunner().invoke(main, [*args, str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    (key, cal), *_ = meta["calibration"].items()
    assert key == "mini/selar" and cal["prompts"] == 6 and cal["soft_target"] == 0.2
    assert meta["method_options"]["mini/selar"]["tau"] == cal["tau"]
    rep = CliRunner().invoke(main, ["report", str(tmp_path / "run"), "--no-plots"])
    assert rep.exit_code == 0, rep.output
    assert f"tau=auto chose tau={cal['tau']:.3f}" in (tmp_path / "run" / "report.md").read_text()
    # a resumed run keeps the recorded tau (no second calibration)
    again = CliRunner().invoke(main, [*args, str(tmp_path / "run"), "--resume"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["calibration"] == meta["calibration"]


def test_tau_auto_outside_eval_is_refused(tiny):
    model = selar.load_model(str(tiny / "model"), dtype="float32", compile="off")
    with pytest.raises(ConfigError, match="tau=auto is calibrated by `selar eval`"):
        selar.generate(model, ["What is 1 + 1?"], "selar", tau="auto", max_new_tokens=4)
