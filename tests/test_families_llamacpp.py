"""The architecture matrix on llama.cpp: each family as a tiny float32 GGUF written by the test
(tests/tiny_gguf.py) with a float32 KV cache, fed step by step exactly the inputs the
transformers engine's session feeds (teacher-forced, tests/forced.py), in a
batch whose rows have different lengths, finish early and join while others run: the same next
token, the same gate decision and the same logits (to float32 rounding) at every step, per
method. Includes the Gemma 3 embedding-scale regression (llama.cpp scales token ids by
sqrt(n_embd) but not float rows)."""

from __future__ import annotations

import forced
import pytest
import torch

pytest.importorskip("llama_cpp", reason="the llama.cpp engine needs llama-cpp-python (pip install 'selar[llamacpp]')")

from conftest import make_tokenizer  # noqa: E402
from families import make_family_model  # noqa: E402
from tiny_gguf import ARCH, write_gguf  # noqa: E402

import selar  # noqa: E402
from selar.decode import new_session  # noqa: E402
from selar.engines.llamacpp import LlamaCppModel  # noqa: E402
from selar.engines.llamacpp import engine as cpp_engine  # noqa: E402
from selar.engines.llamacpp import gguf as gg  # noqa: E402
from selar.errors import CapabilityError  # noqa: E402
from selar.methods import make_config  # noqa: E402

PROMPTS = [
    "How many clips did Natalia sell?",
    "Weng earns $12 an hour for babysitting. Yesterday she did 50 minutes. How much did she earn?",
    "2 + 3 =",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. Total?",
]
N = 16
_PAIRS: dict = {}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-gguf")


def pair(family, gguf_dir):
    """(the family's tiny model on transformers, the same weights as a float32 GGUF on llama.cpp)."""
    if family not in _PAIRS:
        tok = make_tokenizer()
        hf = make_family_model(family, tok, llamacpp=True)
        path = write_gguf(hf, tok, gguf_dir / f"{family}.gguf", family)
        cpp = LlamaCppModel(
            path, tok, name=family, source="gguf", max_rows=4, context=256, kv_type="f32", threads=1, flash_attn=False
        )
        _PAIRS[family] = (selar.wrap(hf, tok, name=family), cpp)
    return _PAIRS[family]


def teacher_forced(tf, cpp, method, limits=(N, 5, N, 8), **options) -> forced.Report:
    """llama.cpp teacher-forced beside transformers (tests/forced.py) over a schedule: rows 0 and 1
    start, row 2 joins after 3 steps and row 3 after 4 more; rows stop at `limits`."""
    session, rep = forced.session(tf, cpp.make_engine(), method, tol=5e-3, max_new_tokens=N, **options)
    session.stop_ids = torch.tensor([], dtype=torch.long)  # rows end at their limits, not at a random EOS
    enc = [selar.format_prompt(tf, p) for p in PROMPTS]
    done = {}

    def add(ids):
        session.add([enc[i] for i in ids], ids, [0] * len(ids), max_new_tokens=[limits[i] for i in ids])

    def steps(k):
        for _ in range(k):
            if session.size:
                done.update({r.id: r for r in session.step()})

    add([0, 1])
    steps(3)
    add([2])
    steps(4)
    add([3])
    while session.size:
        steps(1)
    session.engine.reset()
    assert [len(done[i].token_ids) for i in range(4)] == list(limits)
    return rep


@pytest.mark.parametrize("method", ["cot", "selar"])
@pytest.mark.parametrize("family", list(ARCH))
def test_float32_gguf_equals_transformers(family, method, gguf_dir):
    tf, cpp = pair(family, gguf_dir)
    opts = dict(tau=0.5, protect_symbols=False) if method == "selar" else {}
    a = teacher_forced(tf, cpp, method, **opts)
    assert a.row_steps == N + 5 + N + 8  # every row's every step
    a.assert_ok(min_decided=0.8)  # float32 rounding (the Gemma 3 bug gave 1.4): logits within 5e-3
    if method == "selar":
        assert a.soft_steps > 0  # soft inputs were fed


def test_dense_mixtures_on_gemma3(gguf_dir):
    """Soft Thinking's dense mixtures over the whole vocabulary, scaled like the token path."""
    tf, cpp = pair("gemma3_text", gguf_dir)
    a = teacher_forced(tf, cpp, "soft-thinking")
    a.assert_ok(min_decided=0.8)
    assert a.soft_steps > 0


def test_gemma3_float_rows_carry_the_token_scale(gguf_dir):
    """The regression: llama.cpp's gemma3 graph scales token rows by sqrt(n_embd) and float rows
    not at all. Unscaled float rows (the engine before the fix) disagree with transformers on
    soft steps; the engine's rows carry the factor; the probe would catch an unlisted architecture."""
    tf, cpp = pair("gemma3_text", gguf_dir)
    rows = cpp_engine.float_rows(cpp)
    assert rows.arch == "gemma3" and rows.refusal is None
    assert rows.scale == pytest.approx(float(tf.hf_model.config.hidden_size) ** 0.5)
    try:
        cpp_engine._FLOAT_ROWS[cpp] = cpp_engine.FloatRows("gemma3", 1.0, None)  # the engine before the fix
        before = teacher_forced(tf, cpp, "selar", tau=0.5, protect_symbols=False)
    finally:
        cpp_engine._FLOAT_ROWS[cpp] = rows
    assert before.max_logit_err > 0.1 and before.failures, str(before)


def test_unknown_token_only_transform_is_refused(gguf_dir, monkeypatch):
    """Without the survey's entry for gemma3, the probe finds that a float row E(t) does not give
    token t's logits: methods that feed float rows are refused by architecture; cot still runs."""
    tf, _ = pair("gemma3_text", gguf_dir)
    monkeypatch.setattr(gg, "TOKEN_ONLY_SQRT_SCALE", set())
    cpp = LlamaCppModel(
        gguf_dir / "gemma3_text.gguf",
        tf.tokenizer,
        name="g3",
        source="gguf",
        max_rows=2,
        context=128,
        kv_type="f32",
        flash_attn=False,
        threads=1,
    )
    with pytest.raises(CapabilityError, match="gemma3 model: its graph treats a float row"):
        selar.generate(cpp, PROMPTS[:1], "selar", max_new_tokens=4)
    assert selar.generate(cpp, PROMPTS[:1], "cot", temperature=0, max_new_tokens=4)[0].token_ids


def test_listed_architectures_are_refused(gguf_dir, monkeypatch):
    """An architecture in the survey's refusal list (as if this GGUF were one): float-row methods
    are refused before decoding, with the architecture and the reason."""
    tf, _ = pair("llama", gguf_dir)
    monkeypatch.setitem(gg.FLOAT_ROWS_REFUSED, "llama", "a test reason")
    cpp = LlamaCppModel(
        gguf_dir / "llama.gguf",
        tf.tokenizer,
        name="l",
        source="gguf",
        max_rows=2,
        context=128,
        kv_type="f32",
        flash_attn=False,
        threads=1,
    )
    with pytest.raises(CapabilityError, match="llama model: a test reason"):
        new_session(cpp, make_config("soft-thinking", max_new_tokens=4))
    assert selar.generate(cpp, PROMPTS[:1], "cot", temperature=0, max_new_tokens=4)[0].token_ids
