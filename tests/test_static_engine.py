"""The static-cache engine without compiling (fast): chunked prefill between decode steps (issue 27:
`selar serve` runs this engine under its default `--compile auto`, and its `--prefill-chunk` did
nothing), and the check of a compiled step against the step as is, with a fake compiled callable
that is wrong on purpose (issue 27: an inductor cache shared between CPUs handed over code for
another processor, which emitted token 0 forever). Every comparison is step-wise on the same inputs
(teacher-forced), against the eager engine."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import make_model, make_tokenizer

import selar
from selar.engines.transformers import TransformersEngine, slots
from selar.engines.transformers.model import AUTO_WORK
from selar.engines.transformers.static import StaticEngine
from selar.methods.base import Mixture
from selar.server.prefill import chunks_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

PROMPTS = ["How many clips did Natalia sell?", "2 + 3 =", "Weng earns $12 an hour for babysitting."]


def close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def long_prompt(tok, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += tok.encode(" Natalia sold 48 clips in April and half as many in May, 72 in all.")
    return ids[:n]


@pytest.mark.arithmetic
def test_static_engine_prefills_in_chunks_between_steps(tiny):
    """Two long rows of different lengths prefilled 32 columns at a time while two running rows
    step between the chunks: their logits equal a one-call prefill's, and every step after, with
    hidden states kept and a row leaving, equals the eager engine's (which adds them in one call
    after the same steps). Before, the static engine had no chunked prefill (`chunks_for` None)."""
    hf, pad, tok = tiny.hf_model, tiny.pad_id, tiny.tokenizer
    longs = [long_prompt(tok, 300), long_prompt(tok, 250)]
    shorts = [tok.encode(p) for p in PROMPTS[:2]]
    static = StaticEngine(hf, pad_id=pad, compile=False)
    chunks = chunks_for(static)
    assert chunks is not None and getattr(chunks, "__self__", None) is static

    one = TransformersEngine(hf, pad_id=pad).add(longs)
    parts = list(chunks_for(StaticEngine(hf, pad_id=pad, compile=False))(longs, 32))
    assert len(parts) == -(-300 // 32) and all(p is None for p in parts[:-1])
    close(parts[-1], one)

    eager = TransformersEngine(hf, pad_id=pad)
    eager.keep_hidden = static.keep_hidden = True
    gen = torch.Generator().manual_seed(0)
    pairs = [(static.add(shorts), eager.add(shorts))]

    def step(rows: int) -> None:
        mix = Mixture.of_tokens(torch.randint(0, tiny.vocab_size, (rows,), generator=gen))
        mix.latent = torch.rand(rows, generator=gen) < 0.3
        pairs.append((static.step(mix), eager.step(mix)))
        close(static.hidden, eager.hidden)

    steps = 0
    for out in chunks(longs, 32):  # the running rows step between two chunks
        if out is None:
            step(2)
            steps += 1
        else:
            pairs.append((out, eager.add(longs)))
    assert steps == len(parts) - 1
    close(static.hidden, eager.hidden)
    for _ in range(3):
        step(4)
    keep = torch.tensor([1, 2, 3])
    static.select(keep)
    eager.select(keep)
    for _ in range(3):
        step(3)
    for got, want in pairs:
        close(got, want)


def wrong_compile(scale: float):
    """A stand-in for torch.compile whose "compiled" step adds `scale` x the largest logit times a
    ramp over the vocabulary to the step's logits (as wrong compiled code would, without compiling)."""

    def compile(fn, **kw):
        def step(*args):
            logits, hidden = fn(*args)
            ramp = torch.linspace(0, 1, logits.shape[-1], device=logits.device)
            return logits + scale * logits.abs().max() * ramp, hidden

        return step

    return compile


def teacher_forced(model, engine, n: int = 5) -> list[torch.Tensor]:
    """Logits of three rows prefilled, then n steps of fixed tokens (one row leaving half-way)."""
    enc = [selar.format_prompt(model, p) for p in PROMPTS]
    out = [engine.add(enc)]
    gen = torch.Generator().manual_seed(1)
    rows = 3
    for i in range(n):
        if i == n // 2:
            engine.select(torch.tensor([0, 2]))
            rows = 2
        out.append(engine.step(Mixture.of_tokens(torch.randint(0, model.vocab_size, (rows,), generator=gen))))
    return out


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_a_wrong_compiled_step_falls_back_to_eager(mode, monkeypatch, tmp_path):
    """The compiled step's first result is checked against the step as is on the same inputs:
    2% off (far less than code for another CPU gives) is caught; one warning names the inductor
    cache; the session goes on without the compiled code, and new sessions take the eager engine,
    under compile=on as under auto."""
    monkeypatch.setattr(torch, "compile", wrong_compile(0.02))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    tok = make_tokenizer()
    m = selar.wrap(make_model(tok, seed=7), tok, name="wrong", compile=mode)
    eager = selar.wrap(m.hf_model, tok, name="eager", compile="off")
    m.expect_work(AUTO_WORK)
    engine = m.make_engine()
    assert isinstance(engine, StaticEngine) and engine.step_fn.compiled
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = teacher_forced(m, engine)
    lines = [str(w.message) for w in caught if "compiled decode step" in str(w.message)]
    assert len(lines) == 1, lines  # one check per graph, not one per step
    assert str(tmp_path / "inductor") in lines[0] and "decoding eagerly from now on" in lines[0]
    assert "\n" not in lines[0]
    want = teacher_forced(eager, TransformersEngine(m.hf_model, pad_id=m.pad_id))
    for a, b in zip(got, want):
        close(a, b)
    step = slots.compiled(m.hf_model)
    assert step is not None and step.mismatch and not step.compiled
    assert type(m.make_engine()) is TransformersEngine
    kw = dict(temperature=0, max_new_tokens=12)
    assert [r.token_ids for r in selar.generate(m, PROMPTS, "cot", **kw)] == [
        r.token_ids for r in selar.generate(eager, PROMPTS, "cot", **kw)
    ]


def test_a_compiled_step_within_float_noise_is_kept(monkeypatch):
    """A compiled step off by 1e-5 of the largest logit (the float32 kernels' own spread) passes
    the check: no warning, and the compiled step stays in use."""
    monkeypatch.setattr(torch, "compile", wrong_compile(1e-5))
    tok = make_tokenizer()
    m = selar.wrap(make_model(tok, seed=8), tok, name="noisy", compile="on")
    engine = m.make_engine()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        teacher_forced(m, engine)
    step = slots.compiled(m.hf_model)
    assert step is not None and step.compiled and not step.mismatch
    assert isinstance(m.make_engine(), StaticEngine)
