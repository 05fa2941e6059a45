"""lm-evaluation-harness's `selar` model (selar.integrations.lm_eval_model): its requests decoded
with selar, cross-checked against `selar eval` on the same problems (same prompts, same seeds),
in process on a tiny model and through lm-eval's command line on SmolLM2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import forced
import pytest
import torch

pytest.importorskip("lm_eval")

import selar  # noqa: E402
from selar.engines import Capabilities, Model  # noqa: E402
from selar.errors import CapabilityError, ConfigError  # noqa: E402
from selar.eval.runner import EvalConfig, run_eval  # noqa: E402
from selar.integrations.lm_eval_model import SelarLM  # noqa: E402
from selar.integrations.lm_eval_task import write_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = [
    ("What is 7 + 5?", "12"),
    ("What is 12 * 3?", "36"),
    ("What is 100 - 37?", "63"),
    ("What is 9 + 10?", "19"),
    ("What is 8 * 7?", "56"),
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "7"),
]
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class Req:
    """What lm-eval hands a model: args = (context, gen_kwargs), plus the task and document."""

    def __init__(self, context: str, gen_kwargs: dict, doc_id: int = 0, task_name: str = "t"):
        self.args, self.doc_id, self.task_name = (context, gen_kwargs), doc_id, task_name


class PlanEngine:
    """Every row's logits put all mass on the next token of a fixed plan (so greedy CoT writes it)."""

    def __init__(self, plan: list[int], vocab: int):
        self.plan, self.vocab, self.t, self.n = plan, vocab, 0, 0

    def _logits(self) -> torch.Tensor:
        z = torch.full((self.n, self.vocab), -30.0)
        z[:, self.plan[min(self.t, len(self.plan) - 1)]] = 0.0
        return z

    def add(self, prompts):
        self.n, self.t = len(prompts), 0
        return self._logits()

    def step(self, inputs):
        self.t += 1
        return self._logits()

    def select(self, keep):
        self.n = len(keep)

    def reset(self):
        self.n = 0


class PlanModel(Model):
    engine = "scripted"
    capabilities = Capabilities()

    def __init__(self, tok, plan: list[int]):
        super().__init__(tok, name="plan", source="object", vocab_size=len(tok), stop_ids=[tok.eos_token_id],
                         max_positions=None)  # fmt: skip
        self.plan, self.engines = plan, []

    def make_engine(self):
        self.engines.append(PlanEngine(self.plan, self.vocab_size))
        return self.engines[-1]


@pytest.fixture(scope="module")
def thinking_plan():
    from conftest import make_tokenizer

    tok = make_tokenizer(thinking=True)
    pieces = ["so 1 2", "\n\n", "3 ", "</think>", " The answer is 72.", "\n\n", "x y z a b c"]
    ids = [tok.encode(p, add_special_tokens=False) for p in pieces]
    answer_end = sum(len(x) for x in ids[:6])  # tokens up to the blank line after the answer
    return tok, [t for x in ids for t in x], answer_end


def run(lm: SelarLM, context: str, **gen_kwargs) -> str:
    return lm.generate_until([Req(context, gen_kwargs)], disable_tqdm=True)[0]


def test_thinking_model_stops_after_reasoning_and_strips_it(thinking_plan):
    tok, plan, answer_end = thinking_plan
    model = PlanModel(tok, plan)
    lm = SelarLM(pretrained=model, method="cot")
    assert lm.think_end == "</think>"
    assert run(lm, "q", until=["\n\n"], max_gen_toks=len(plan) + 5) == "The answer is 72."
    # the blank line inside the reasoning did not stop the row; the one after the answer did
    assert model.engines[-1].t + 1 == answer_end < len(plan)  # tokens emitted = steps + 1


def test_strip_thinking_off_keeps_the_reasoning_and_stops_anywhere(thinking_plan):
    tok, plan, _ = thinking_plan
    lm = SelarLM(pretrained=PlanModel(tok, plan), method="cot", strip_thinking=False)
    assert run(lm, "q", until=["\n\n"], max_gen_toks=len(plan) + 5) == "so 1 2"
    whole = tok.decode(plan[:7], skip_special_tokens=True)
    assert run(lm, "q", until=[], max_gen_toks=7) == whole  # max_gen_toks bounds the row


def test_loglikelihood_requests_are_refused(tiny):
    lm = SelarLM(pretrained=tiny)
    for fn in (lm.loglikelihood, lm.loglikelihood_rolling):
        with pytest.raises(CapabilityError, match="generate_until tasks.*hf model"):
            fn([Req("a", {})])


def test_bad_options_fail_before_loading():
    with pytest.raises(ConfigError, match="tau"):
        SelarLM(pretrained="no-such-model-anywhere", method="selar", tau=3.0)


def test_sampling_follows_the_task_and_seeds_follow_selar_eval(tiny):
    from selar.eval.runner import row_seed

    lm = SelarLM(pretrained=tiny, method="selar", tau=0.6, seed=4)
    ctx = lm.apply_chat_template([{"role": "user", "content": "2 + 3 ="}])
    got = lm.generate_until([Req(ctx, {"do_sample": True, "temperature": 0.8, "max_gen_toks": 12}, 3, "arith")],
                            disable_tqdm=True)  # fmt: skip
    ref = selar.generate(tiny, "2 + 3 =", "selar", tau=0.6, temperature=0.8, max_new_tokens=12, soft_scope="guarded",
                         seeds=[row_seed(4, "arith", "3", 0)])  # fmt: skip
    assert got == [ref[0].text]
    greedy = run(lm, ctx, max_gen_toks=12)  # no sampling settings in the task: greedy, as lm-eval's models
    ref = selar.generate(tiny, "2 + 3 =", "selar", tau=0.6, temperature=0, max_new_tokens=12, soft_scope="guarded")
    assert greedy == ref[0].text


def test_plugin_is_declared_for_lm_eval_and_registered():
    from lm_eval.api.registry import get_model

    section = (ROOT / "pyproject.toml").read_text().split('[project.entry-points."lm_eval.models"]')[1]
    module, _, attr = re.search(r'^selar = "([^"]+)"', section, re.M).group(1).partition(":")
    assert getattr(__import__(module, fromlist=[attr]), attr) is SelarLM is get_model("selar")
    assert get_model("hf").__name__ == "HFLM"  # lm-eval's own models are still there


def test_cli_runner_registers_other_entry_points(monkeypatch):
    from importlib.metadata import EntryPoint

    from lm_eval.api.registry import get_model, model_registry

    from selar.integrations import lm_eval_cli

    ep = EntryPoint("selar-test-alias", "selar.integrations.lm_eval_model:SelarLM", "lm_eval.models")
    monkeypatch.setattr(lm_eval_cli, "entry_points", lambda group: [ep] if group == "lm_eval.models" else [])
    try:
        lm_eval_cli.register()
        assert get_model("selar-test-alias") is SelarLM
    finally:
        model_registry._objs.pop("selar-test-alias", None)


def write_problems(path: Path) -> Path:
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in PROBLEMS))
    return path


def selar_eval(model, data: Path, out: Path, batch_size: int = 8, **sets) -> list[dict]:
    cfg = EvalConfig(model=model.name, datasets=[], methods=["selar"], data=str(data), sets=sets, batch_size=batch_size)
    results = run_eval(cfg, str(out), model=model, progress=False)
    return [json.loads(line) for line in results.read_text().splitlines()]


def test_lm_eval_in_process_equals_selar_eval_tiny(tiny, tmp_path, monkeypatch):
    import lm_eval
    from lm_eval.tasks import TaskManager

    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    data = write_problems(tmp_path / "arith.jsonl")
    write_task(data, tmp_path / "tasks", max_gen_toks=16)
    lm = SelarLM(pretrained=tiny, method="selar", tau=0.5, batch_size=8)
    tasks = TaskManager(include_path=str(tmp_path / "tasks"))
    res = lm_eval.simple_evaluate(model=lm, tasks=["arith"], task_manager=tasks, apply_chat_template=True,
                                  log_samples=True, gen_kwargs="do_sample=true,temperature=0.8")  # fmt: skip
    ours = selar_eval(tiny, data, tmp_path / "run", tau=0.5, temperature=0.8, max_new_tokens=16)
    samples = sorted(res["samples"]["arith"], key=lambda s: s["doc_id"])
    assert [s["resps"][0][0] for s in samples] == [r["text"] for r in ours]
    contexts = [s["arguments"][0][0] for s in samples]  # the prompts lm-eval built, as selar eval's token ids
    assert [tiny.tokenizer.encode(c, add_special_tokens=False) for c in contexts] == [
        selar.format_prompt(tiny, r["prompt"]) for r in ours
    ]
    assert res["results"]["arith"]["acc,none"] == sum(r["correct"] for r in ours) / len(ours)


@pytest.mark.slow
def test_lm_eval_cli_accuracy_equals_selar_eval_smollm2(smollm2, tmp_path):
    """The cross-check through lm-eval's command line, another process: its sampled SeLaR texts are
    selar's method with selar eval's seeds and settings wherever float32 decides a step (another
    process may run other kernels, and free-running SeLaR is chaotic, so each text is replayed here,
    teacher-forced, step by step), and lm-eval's accuracy is selar's grading of those texts."""
    from selar.eval.grading import grade
    from selar.eval.runner import row_seed

    data = write_problems(tmp_path / "arith.jsonl")
    write_task(data, tmp_path / "tasks", max_gen_toks=48)
    cmd = [sys.executable, "-m", "selar.integrations.lm_eval_cli", "run", "--model", "selar",
           "--model_args", "pretrained=smollm2-135m,method=selar,tau=0.5,engine=transformers,dtype=float32",
           "--include_path", str(tmp_path / "tasks"), "--tasks", "arith", "--apply_chat_template",
           "--batch_size", "1", "--gen_kwargs", "do_sample=true,temperature=0.6",
           "--output_path", str(tmp_path / "lm"), "--log_samples"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **OFFLINE}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lm_results = json.loads(next((tmp_path / "lm").rglob("results_*.json")).read_text())
    samples = [json.loads(x) for x in next((tmp_path / "lm").rglob("samples_arith_*.jsonl")).read_text().splitlines()]
    samples.sort(key=lambda s: s["doc_id"])
    texts = [s["resps"][0][0] for s in samples]
    assert len(texts) == len(PROBLEMS) and all(texts)
    # the same problems through selar's own settings for lm-eval's request (SelarLM._options)
    lm = SelarLM(pretrained=smollm2, method="selar", tau=0.5)
    args = [s["arguments"]["gen_args_0"] for s in samples]  # (context, gen_kwargs) of each request
    opts, _ = lm._options(args[0]["arg_1"])
    assert opts["temperature"] == 0.6 and opts["max_new_tokens"] == 48
    enc = [smollm2.tokenizer.encode(a["arg_0"], add_special_tokens=False) for a in args]  # templated already
    seeds = [row_seed(0, "arith", str(s["doc_id"]), 0) for s in samples]
    # each text's tokens but the last (a stop string may have cut into the last one)
    tokens = [smollm2.tokenizer.encode(t, add_special_tokens=False)[:-1] for t in texts]
    rep = forced.replay(smollm2, enc, tokens, "selar", tol=1e-3, seeds=seeds, retokenized=True, **opts)
    print("\nlm-eval CLI texts replayed:", rep)
    rep.assert_ok()
    lm_acc = lm_results["results"]["arith"]["acc,none"]
    assert lm_acc == sum(grade(t, a)[0] for t, (_, a) in zip(texts, PROBLEMS)) / len(PROBLEMS)


@pytest.mark.parametrize("stepwise,guard", [(False, True), (True, False), (True, True)])
def test_answer_guard_is_decided_as_selar_eval_decides_it(stepwise, guard):
    """Bug 5 of issue 28: lm-eval's `selar` model and `selar eval` read the same capability (an
    engine with its own scheduler, vLLM, runs the guard: both protocols guard there)."""
    from conftest import make_tokenizer

    from selar.eval.config import EvalConfig
    from selar.eval.runner import run_options

    model = PlanModel(make_tokenizer(), [5])
    model.capabilities = Capabilities(stepwise=stepwise, answer_guard=guard)
    lm = SelarLM(pretrained=model, method="selar")
    own = run_options(EvalConfig(model="m", datasets=["gsm8k"], methods=["selar"]), model, ["gsm8k"])
    assert lm.options.get("soft_scope") == own[("gsm8k", "selar")].get("soft_scope")
    assert (lm.options.get("soft_scope") == "guarded") == guard
