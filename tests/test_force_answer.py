"""The answer forced at a token budget (`force_answer_at`, selar/forcing.py), as SwiR's evaluation
does: a row that has generated B tokens without stopping emits the forced text (with `</think>`
first when its reasoning is open), then at most `forced_answer_tokens` free tokens, all fed plainly."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from forced import joined
from thinking import _RawSoft, _Recorder, chat, dense_input, thinking_model

import selar
from selar.decode import new_session, run_continuous, run_to_end
from selar.errors import CapabilityError, ConfigError
from selar.forcing import FORCED_ANSWER, THINK_CLOSE
from selar.methods import make_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [
    "How many clips did Natalia sell?",
    "Weng earns $12 an hour for babysitting. Yesterday she did 50 minutes. How much did she earn?",
    "2 + 3 =",
]


def hf_greedy(model: selar.Model, ids: list[int], n: int) -> list[int]:
    """Independent reference: transformers' own greedy generate from `ids`, cut after a stop id."""
    out = model.hf_model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=n,
        eos_token_id=model.stop_ids,
        pad_token_id=model.pad_id,
        top_k=None,
        top_p=None,
        temperature=None,
    )[0, len(ids) :].tolist()
    return out[: next((i + 1 for i, t in enumerate(out) if t in model.stop_ids), len(out))]


def expected(model: selar.Model, prompt: list[int], budget: int, answer: int) -> list[int]:
    """The row SwiR's evaluation makes: B greedy tokens, the forced text, then greedy for `answer` tokens."""
    first = hf_greedy(model, prompt, budget)
    assert len(first) == budget and not set(first) & set(model.stop_ids), "the row stops before its budget"
    forced = model.tokenizer.encode(FORCED_ANSWER, add_special_tokens=False)
    return first + forced + hf_greedy(model, prompt + first + forced, answer)


def test_cot_greedy_forced_equals_generate_on_the_forced_prefix(tiny):
    B, A = 6, 8
    enc = [selar.format_prompt(tiny, p) for p in PROMPTS]
    got = selar.generate(tiny, PROMPTS, "cot", temperature=0, force_answer_at=B, forced_answer_tokens=A, batch_size=3)
    n_forced = len(tiny.tokenizer.encode(FORCED_ANSWER, add_special_tokens=False))
    for e, r in zip(enc, got):
        want = expected(tiny, e, B, A)
        assert r.token_ids == want
        assert r.forced_at == B
        stopped = want[-1] in tiny.stop_ids
        assert r.finish_reason == ("stop" if stopped else "length")
        assert stopped or len(r.token_ids) == B + n_forced + A
    assert "\n\nThe final answer is" in got[0].text


def test_soft_method_forced_steps_are_plain_and_the_budget_is_unchanged(peaked):
    """SeLaR going soft: its first B steps equal the unforced run's, token for token and soft flag
    for soft flag (same kernels, same batch); every later step is plain, and the input fed there is
    the emitted token, although the method itself would have fed a mixture."""
    B, A = 8, 6
    kw = dict(temperature=0, tau=0.0, protect_symbols=False, max_new_tokens=40)
    enc = [selar.format_prompt(peaked, p) for p in PROMPTS]

    def rows(**more):
        return run_to_end(new_session(peaked, make_config("selar", **kw, **more)), enc, [0] * len(enc))

    free, forced = rows(), rows(force_answer_at=B, forced_answer_tokens=A)
    for f, r in zip(free, forced):
        assert len(f.token_ids) > B and any(f.soft[:B])  # it goes soft within the budget
        assert r.token_ids[:B] == f.token_ids[:B] and r.soft[:B] == f.soft[:B]
        assert r.forced_at == B and not any(r.soft[B:])
    # the decode layer keeps forced rows plain even for a method that would feed a mixture there
    s = new_session(peaked, make_config("selar", **kw, force_answer_at=B, forced_answer_tokens=A))
    s.engine, s.method = _Recorder(s.engine), _IgnoresScope(s.method)
    (row,) = run_to_end(s, enc[:1], [0])
    assert any(s.method.raw[B:]), "the method would not go soft after the budget, so this proves nothing"
    assert row.forced_at == B and not any(row.soft[B:])
    V = peaked.vocab_size
    for k in range(B, min(len(s.engine.fed), len(row.token_ids))):
        one = torch.nn.functional.one_hot(torch.tensor(row.token_ids[k]), V).float()
        assert torch.equal(dense_input(s.engine.fed[k], V), one), k


class _IgnoresScope(_RawSoft):
    """The session's method shown every row inside its scope (so it goes soft wherever uncertain),
    its own soft flags recorded before the decode layer's scope rules."""

    def step(self, ctx, state):
        return super().step(replace(ctx, in_scope=torch.ones_like(ctx.in_scope)), state)


@pytest.fixture(scope="module")
def qwen3():
    return thinking_model(compile="off")


def test_thinking_rows_get_think_end_only_while_their_reasoning_is_open(qwen3):
    """The fixture writes <think>, reasoning words, </think> (at step e), "\\n\\n", then an answer.
    Forced before e its reasoning is open: </think> comes first; forced after e it has closed it:
    only the answer text; a prompt whose template closed the think block (thinking off): only the
    answer text."""
    tok = qwen3.tokenizer
    answer = tok.encode(FORCED_ANSWER, add_special_tokens=False)
    closing = tok.encode(THINK_CLOSE + FORCED_ANSWER, add_special_tokens=False)
    assert closing[0] == qwen3.think_end and closing[1:] == answer
    on, off = chat(qwen3, "What is 2 + 2?", True), chat(qwen3, "Is the sky blue?", False)
    free = run_to_end(new_session(qwen3, make_config("cot", temperature=0, max_new_tokens=20)), [on, off], [0, 0])
    e = free[0].token_ids.index(qwen3.think_end)
    assert e >= 3 and len(free[0].token_ids) > e + 2 and len(free[1].token_ids) >= 2, free

    def forced(budget: int, prompt: list[int]):
        cfg = make_config("cot", temperature=0, max_new_tokens=20, force_answer_at=budget, forced_answer_tokens=4)
        (row,) = run_to_end(new_session(qwen3, cfg), [prompt], [0])
        return row

    b = e - 1
    opened = forced(b, on)
    assert opened.token_ids[:b] == free[0].token_ids[:b] and opened.token_ids[b : b + len(closing)] == closing
    assert opened.token_ids.count(qwen3.think_end) == 1
    b = e + 2
    closed = forced(b, on)
    assert closed.token_ids[:b] == free[0].token_ids[:b] and closed.token_ids[b : b + len(answer)] == answer
    assert closed.token_ids.count(qwen3.think_end) == 1
    plain = forced(1, off)
    assert plain.token_ids[1 : 1 + len(answer)] == answer and qwen3.think_end not in plain.token_ids
    assert (opened.forced_at, closed.forced_at, plain.forced_at) == (e - 1, e + 2, 1)


def test_continuous_batching_rows_joining_later_are_forced_at_their_own_budget(tiny):
    """Rows of different prompt lengths joining a running batch at different steps, and leaving
    as they finish: each is the independent computation of its own prompt."""
    B, A = 5, 7
    enc = [selar.format_prompt(tiny, p) for p in PROMPTS]
    enc.append(selar.format_prompt(tiny, "Natalia sold clips to 48 of her friends in April."))
    s = new_session(tiny, make_config("cot", temperature=0, force_answer_at=B, forced_answer_tokens=A))
    got = joined(s, enc, seed=0, waits=(3, 4))  # row 0 is inside its forced text when row 3 joins
    for i, e in enumerate(enc):
        assert got[i].token_ids == expected(tiny, e, B, A), i
        assert got[i].forced_at == B
    # and run_continuous with a batch of 2 (rows replaced as they finish) agrees
    again = {r.id: r for r in run_continuous(s, enc, [0] * len(enc), 2)}
    assert [again[i].token_ids for i in range(len(enc))] == [got[i].token_ids for i in range(len(enc))]


@pytest.mark.parametrize("bound", ["max_new_tokens", "context"])
def test_max_new_tokens_and_the_context_bound_a_forced_row(tiny, bound):
    """A row with less room after its budget than the forced text and its answer (within
    max_new_tokens, or the model's context) is forced sooner, so it never runs past either."""
    prompt = selar.format_prompt(tiny, PROMPTS[0])
    forced = tiny.tokenizer.encode(FORCED_ANSWER, add_special_tokens=False)
    cfg = make_config("cot", temperature=0, force_answer_at=20, forced_answer_tokens=4, ignore_eos=True,
                      max_new_tokens=20 if bound == "max_new_tokens" else 64)  # fmt: skip
    s = new_session(tiny, cfg)
    if bound == "context":
        s.max_positions = len(prompt) + 20
    (row,) = run_to_end(s, [prompt], [0])  # room for 20 tokens: forced at 20 - (len(forced) + 4)
    at = 20 - len(forced) - 4
    assert row.forced_at == at and row.token_ids[at : at + len(forced)] == forced
    assert len(row.token_ids) == 20 and row.finish_reason == "length"


@pytest.mark.parametrize(
    "opts,message",
    [
        ({"force_answer_at": -1}, "force_answer_at must be 0 \\(off\\) or a token budget of 1 or more"),
        ({"forced_answer_tokens": 0}, "forced_answer_tokens must be at least 1"),
        ({"force_answer_at": 64, "max_new_tokens": 32}, "raise max_new_tokens to at least force_answer_at"),
        ({"force_answer_at": True}, "force_answer_at must be an integer"),
    ],
)
def test_bad_forcing_options(opts, message):
    with pytest.raises(ConfigError, match=message):
        make_config("selar", **opts)


def test_a_session_built_by_hand_needs_the_forced_ids(tiny):
    from selar.decode import DecodeSession
    from selar.methods import get_method_spec

    cfg = make_config("cot", force_answer_at=8)
    method = get_method_spec("cot").factory(cfg.options, tiny.vocab_info())
    with pytest.raises(ConfigError, match="pass forced=forcing.forced_answer"):
        DecodeSession(tiny.make_engine(), method, cfg.sampling, stop_ids=tiny.stop_ids, think_end=None,
                      reasoning_scope=False)  # fmt: skip


def test_vllm_refuses_forcing_naming_the_engines_that_force():
    """vLLM runs its own scheduler, not the shared decode loop that forces answers: refused (its
    runner and its requests), without vLLM installed."""
    from selar.engines.registry import engines_with
    from selar.engines.vllm.request import refuse_options

    assert engines_with("force_answer") == ["transformers", "llamacpp"]
    with pytest.raises(
        CapabilityError, match="force_answer_at is not supported on the vLLM engine.*transformers or llamacpp"
    ):
        refuse_options(make_config("selar", force_answer_at=64))
    refuse_options(make_config("selar"))  # off: runs


def test_eval_refuses_forcing_on_an_engine_without_it():
    from selar.engines.base import Model
    from selar.engines.registry import get_engine
    from selar.eval.config import EvalConfig
    from selar.eval.runner import run_options

    class OnVLLM(Model):
        engine, capabilities, think_end = "vllm", get_engine("vllm").capabilities, None

        def __init__(self):
            pass

    cfg = EvalConfig(model="x", datasets=["gsm8k"], methods=["cot"], sets={"force_answer_at": 64})
    with pytest.raises(CapabilityError, match="force_answer_at .* use the transformers or llamacpp engine"):
        run_options(cfg, OnVLLM(), ["gsm8k"])


def test_selar_eval_with_force_answer_at_and_the_report_of_two_budgets(tmp_path):
    """`selar eval --set force_answer_at=B` end to end (fixed and continuous schedules), then
    `selar report` of the two runs: run.json holds the option, every record its forced step and
    finish reason, and the report a forced-budget table with a column per budget."""
    import json

    from click.testing import CliRunner
    from conftest import make_model, make_tokenizer

    from selar.cli import main

    tok = make_tokenizer()
    make_model(tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    data = tmp_path / "mini.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(3))
    )
    runs = []
    for b, schedule in ((8, "fixed"), (16, "continuous")):
        out = tmp_path / f"at{b}"
        args = ["eval", "--model", str(tmp_path / "model"), "--data", str(data), "--methods", "cot,selar"]
        args += ["--set", f"force_answer_at={b}", "--set", "forced_answer_tokens=4", "-n", "64", "--batch-size", "2"]
        res = CliRunner().invoke(main, [*args, "--dtype", "float32", "--schedule", schedule, "--out", str(out)])
        assert res.exit_code == 0, res.output
        meta = json.loads((out / "run.json").read_text())
        assert meta["config"]["sets"]["force_answer_at"] == b
        assert all(o["force_answer_at"] == b for o in meta["method_options"].values())
        recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert len(recs) == 6
        for r in recs:  # a row that ended within its budget is not forced
            if r["num_tokens"] <= b:
                assert "forced_at" not in r and r["finish_reason"] == "stop"
            else:
                assert r["forced_at"] == b and r["finish_reason"] in ("length", "stop")
                assert "The final answer is" in r["text"]
        assert sum("forced_at" in r for r in recs) >= 4
        runs.append(out)
    res = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(tmp_path / "rep"), "--no-plots"])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| selar@force_answer_at=8 |" in md and "| cot@force_answer_at=16 |" in md
    section = md.split("## Accuracy with the answer forced at the budget")[1]
    assert "| dataset | method | @ 8 | @ 16 |" in section and "| mini | selar |" in section


def test_force_answer_on_llamacpp(tmp_path):
    """The llama.cpp engine decodes through the same loop: a forced CoT row on a tiny float32 GGUF
    equals llama.cpp's own greedy generation on the prompt, then on the prompt + its first B
    tokens + the forced ids."""
    pytest.importorskip(
        "llama_cpp", reason="the llama.cpp engine needs llama-cpp-python (pip install 'selar[llamacpp]')"
    )
    from conftest import make_tokenizer
    from families import make_family_model
    from tiny_gguf import write_gguf

    from selar.engines.llamacpp import LlamaCppModel, llamacpp_greedy

    B, A = 6, 8
    tok = make_tokenizer()
    path = write_gguf(make_family_model("llama", tok, llamacpp=True), tok, tmp_path / "llama.gguf", "llama")
    cpp = LlamaCppModel(path, tok, name="tiny", source="gguf", max_rows=4, context=256, kv_type="f32", threads=1,
                        flash_attn=False)  # fmt: skip
    try:
        enc = [selar.format_prompt(cpp, p) for p in PROMPTS]
        got = selar.generate(cpp, PROMPTS, "cot", temperature=0, force_answer_at=B, forced_answer_tokens=A)
        forced = tok.encode(FORCED_ANSWER, add_special_tokens=False)
        for e, r in zip(enc, got):
            first = llamacpp_greedy(cpp, e, B)
            assert len(first) == B and not set(first) & set(cpp.stop_ids)
            assert r.token_ids == first + forced + llamacpp_greedy(cpp, e + first + forced, A)
            assert r.forced_at == B
    finally:
        cpp.close()
