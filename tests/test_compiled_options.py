"""The sampling options that ask for equal-length work: `ignore_eos` (stop ids do not end a row)
and `min_new_tokens` (stop ids cannot be drawn before that many tokens), against transformers'
own `generate`; and their validation."""

from __future__ import annotations

import pytest
import torch

import selar
from selar.errors import ConfigError

PROMPTS = ["How many clips did Natalia sell?", "2 + 3 ="]


def _with_stop(model, stop: int):
    """The same transformers model and tokenizer, with `stop` as its only stop id."""
    m = selar.wrap(model.hf_model, model.tokenizer, name="stop")
    m.stop_ids = [stop]
    return m


def _hf(model, prompt: str, n: int, **kw) -> list[int]:
    ids = torch.tensor([selar.format_prompt(model, prompt)])
    out = model.hf_model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=n,
        pad_token_id=model.pad_id,
        top_k=None,
        top_p=None,
        temperature=None,
        **kw,
    )
    return out[0, ids.shape[1] :].tolist()


def _greedy(model, n: int, **kw):
    return selar.generate(model, PROMPTS, "cot", temperature=0, max_new_tokens=n, **kw)


def test_ignore_eos_runs_every_row_to_its_budget(tiny):
    free = [r.token_ids for r in _greedy(tiny, 20, ignore_eos=True)]  # tiny's own stop id never ends a row
    stop = free[0][5]  # a token the first row emits at step 5
    m = _with_stop(tiny, stop)
    cut = _greedy(m, 20)
    assert cut[0].finish_reason == "stop" and cut[0].token_ids == free[0][: free[0].index(stop) + 1]
    full = _greedy(m, 20, ignore_eos=True)
    assert [r.token_ids for r in full] == free
    assert all(r.finish_reason == "length" and r.num_tokens == 20 for r in full)


def test_min_new_tokens_matches_transformers(tiny):
    free = _greedy(tiny, 24, ignore_eos=True)[0].token_ids
    stop = free[2]
    m = _with_stop(tiny, stop)
    k = free.index(stop) + 6
    got = _greedy(m, 24, min_new_tokens=k)[0]
    ref = _hf(m, PROMPTS[0], 24, min_new_tokens=k, eos_token_id=stop)
    assert got.token_ids == ref[: next((i + 1 for i, t in enumerate(ref) if t == stop), len(ref))]
    assert got.token_ids[: free.index(stop) + 1] != free[: free.index(stop) + 1]  # the early stop was not drawn
    soft = selar.generate(m, PROMPTS[:1], "selar", temperature=0, max_new_tokens=24, min_new_tokens=k, tau=0.0)[0]
    assert stop not in soft.token_ids[:k] and soft.num_soft_steps > 0


def test_options_are_validated():
    from selar.config import SamplingConfig

    with pytest.raises(ConfigError, match="min_new_tokens"):
        SamplingConfig(min_new_tokens=-1)
    with pytest.raises(ConfigError, match="min_new_tokens"):
        SamplingConfig(max_new_tokens=8, min_new_tokens=9)
    with pytest.raises(ConfigError, match="ignore_eos"):
        SamplingConfig(ignore_eos="yes")  # type: ignore[arg-type]
    assert SamplingConfig(max_new_tokens=8, min_new_tokens=8, ignore_eos=True).min_new_tokens == 8


def test_compile_option_and_its_load_options():
    import click
    from click.testing import CliRunner

    from selar.cli.options import compile_load_options, compile_option

    @click.command()
    @compile_option
    def cmd(compile_mode):
        click.echo(compile_mode)

    assert CliRunner().invoke(cmd, []).output.strip() == "auto"
    assert CliRunner().invoke(cmd, ["--compile", "on"]).output.strip() == "on"
    assert CliRunner().invoke(cmd, ["--compile", "yes"]).exit_code == 2
    assert compile_load_options("transformers", "off") == {"compile": "off"}
    assert compile_load_options("llamacpp", "auto") == {}
    with pytest.raises(SystemExit) as e:
        compile_load_options("llamacpp", "on")
    assert e.value.code == 2


def test_long_jobs_declare_their_work(tiny, tmp_path, monkeypatch):
    """compile="auto" compiles once a job's declared work pays for it: eval (both schedules) and
    entropy sweeps declare rows x max_new_tokens before decoding (the continuous schedule and the
    sweeps decode through sessions, which declared nothing before)."""
    import json

    from selar.analysis.entropy import collect
    from selar.eval.config import EvalConfig
    from selar.eval.runner import run_eval

    declared: list[float] = []
    monkeypatch.setattr(tiny, "expect_work", declared.append, raising=False)
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i} + 1 =", "answer": str(i + 1)}) + "\n" for i in range(5)))
    for schedule in ("fixed", "continuous"):
        declared.clear()
        cfg = EvalConfig(model="tiny", datasets=[], methods=["cot"], data=str(data), schedule=schedule,
                         sets={"max_new_tokens": 6}, batch_size=2)  # fmt: skip
        run_eval(cfg, str(tmp_path / schedule), model=tiny, progress=False)
        assert sum(declared) == 5 * 6, schedule
    declared.clear()
    collect(tiny, ["a", "b", "c"], max_new_tokens=4, batch_size=2)
    assert declared == [3 * 4]
