"""The llama.cpp engine on the packaged SmolLM2 GGUF: equality with llama.cpp's own greedy
generation, soft inputs, agreement with the transformers engine, shared contexts, CLI, eval
and server. Skipped when llama-cpp-python is not installed (pip install 'selar[llamacpp]')."""

from __future__ import annotations

import json
import threading

import forced
import pytest
import torch

pytest.importorskip("llama_cpp", reason="the llama.cpp engine needs llama-cpp-python (pip install 'selar[llamacpp]')")

import selar  # noqa: E402
from selar.errors import CapacityError, ConfigError, ModelLoadError  # noqa: E402
from selar.methods.base import Mixture  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is 17 * 23?",
    "Name three colours.",
    "Natalia sold 48 clips in April and half as many in May. How many clips did she sell in total?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
]


@pytest.fixture(scope="module")
def cpp(smollm2):  # the transformers fixture pulls the catalog model (and sets SELAR_CACHE)
    return selar.load_model("smollm2-135m", engine="llamacpp", max_rows=4, context=1024)


def test_cot_greedy_equals_llamacpp_greedy(cpp):
    from selar.engines.llamacpp import llamacpp_greedy

    enc = [selar.format_prompt(cpp, p) for p in PROMPTS]
    want = [llamacpp_greedy(cpp, e, 40) for e in enc]
    assert sum(map(len, want)) > 100
    one = [selar.generate(cpp, [p], "cot", temperature=0, max_new_tokens=40)[0].token_ids for p in PROMPTS]
    four = [r.token_ids for r in selar.generate(cpp, PROMPTS, "cot", temperature=0, max_new_tokens=40, batch_size=4)]
    assert one == want
    assert four == want


def _last_logits(engine, prompt, inputs):
    engine.reset()
    engine.add([prompt])
    out = engine.step(inputs)
    engine.reset()
    return out


def test_embedding_rows_and_mixtures(cpp):
    """A float input row E(t) gives the logits of token t; a sparse mixture equals the same
    mixture given densely over the vocabulary, and equals sum_j w_j E(v_j) from the GGUF table."""
    eng = cpp.make_engine()
    prompt = selar.format_prompt(cpp, PROMPTS[0])
    t, u = 504, 2001
    tok = _last_logits(eng, prompt, Mixture.of_tokens(torch.tensor([t])))
    emb = _last_logits(eng, prompt, Mixture(torch.tensor([[t, t]]), torch.tensor([[0.5, 0.5]])))  # float row E(t)
    assert torch.allclose(tok, emb, atol=1e-3), float((tok - emb).abs().max())
    sparse = _last_logits(eng, prompt, Mixture(torch.tensor([[t, u]]), torch.tensor([[0.7, 0.3]])))
    dense_w = torch.zeros(1, cpp.vocab_size)
    dense_w[0, t], dense_w[0, u] = 0.7, 0.3
    dense = _last_logits(eng, prompt, Mixture(None, dense_w))
    assert torch.allclose(sparse, dense, atol=1e-3)
    assert float((sparse - tok).abs().max()) > 0.1  # the mixture is a different input
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(cpp.gguf))
    t_embd = next(x for x in reader.tensors if x.name == "token_embd.weight")
    table = dequantize(t_embd.data, t_embd.tensor_type).reshape(cpp.n_vocab, cpp.n_embd)
    assert abs(cpp.table[[t, u]] - table[[t, u]]).max() == 0


def test_agreement_with_the_transformers_engine(cpp, smollm2):
    """Same GGUF weights: transformers computes in float32, llama.cpp with 8-bit activations.
    Fed the same inputs (tokens and soft mixtures), llama.cpp picks the same next token and
    makes the same gate decision almost always; free-running rows drift apart after near-ties."""
    from selar.analysis.agreement import agreement

    a = agreement(smollm2, cpp, PROMPTS, "selar", max_new_tokens=64, batch_size=4)
    print("selar agreement (smollm2):", a)
    assert a.forced_total > 150
    assert a.forced >= 0.9
    assert a.gate >= 0.9
    assert a.free_same > 0


@pytest.mark.arithmetic
def test_float32_gguf_equals_the_transformers_engine(smollm2, tmp_path, monkeypatch):
    """The quantised-arithmetic gap above is llama.cpp's, not the engine's: the same weights
    written as float32 (convert_gguf, llama.cpp's own dequantiser) with a float32 KV cache, fed the
    transformers engine's inputs step by step, give its logits to float32 precision and selar's
    tokens, gate decisions and soft inputs wherever float32 decides them."""
    from selar.engines.llamacpp import convert_gguf

    f32 = convert_gguf("smollm2-135m", tmp_path / "smollm2-f32.gguf", "f32")
    assert f32.stat().st_size > 4 * 134_000_000
    monkeypatch.setenv("SELAR_LLAMACPP_ARGS", '{"kv_type": "f32", "flash_attn": false}')  # as the CLI would
    cpp32 = selar.load_model(str(f32), engine="llamacpp", max_rows=4, context=1024)
    assert (cpp32.kv_type, cpp32.flash_attn) == ("f32", False)
    enc = [selar.format_prompt(smollm2, p) for p in PROMPTS]
    # two engines' kernels: llama.cpp is teacher-forced beside the transformers engine, every step
    rep = forced.compare(smollm2, cpp32.make_engine(), enc, "selar", tol=2e-3, max_new_tokens=64)
    print("\nllama.cpp float32 vs transformers, selar, teacher-forced:", rep)
    rep.assert_ok()
    assert rep.soft_steps > 10 and rep.inputs_checked > 0.8 * rep.row_steps
    with pytest.raises(ConfigError, match="kv_type"):
        selar.load_model(str(f32), engine="llamacpp", kv_type="f8")
    monkeypatch.setenv("SELAR_LLAMACPP_ARGS", '{"kv": "f32"}')
    with pytest.raises(ConfigError, match="unknown option.*kv"):
        selar.load_model(str(f32), engine="llamacpp")
    with pytest.raises(ConfigError, match="must be one of"):
        convert_gguf(f32, tmp_path / "x.gguf", "q2")


def test_sessions_share_one_context(cpp):
    """Two sessions stepped in turn (as in the server) give what each gives alone; sequences of
    an engine dropped without a reset are reclaimed. Both methods feed tokens only (selar with
    tau=1 never goes soft): greedy token decoding is compared token for token, while soft
    trajectories would part on the ulps a shared cache's larger attention span may change."""
    from selar.api import new_session
    from selar.methods import make_config

    kw = {"cot": {}, "selar": {"tau": 1.0}}
    alone = {
        m: selar.generate(cpp, PROMPTS[:2], m, temperature=0, max_new_tokens=24, batch_size=2, **kw[m])
        for m in ("cot", "selar")
    }
    sessions = {
        m: new_session(cpp, make_config(m, temperature=0, max_new_tokens=24, **kw[m])) for m in ("cot", "selar")
    }
    for s in sessions.values():
        s.add([selar.format_prompt(cpp, p) for p in PROMPTS[:2]], [0, 1], [0, 0])
    out = {m: {} for m in sessions}
    while any(s.size for s in sessions.values()):
        for m, s in sessions.items():
            if s.size:
                for row in s.step():
                    out[m][row.id] = row.token_ids
    for m in sessions:
        assert [out[m][i] for i in range(2)] == [r.token_ids for r in alone[m]]

    eng = cpp.make_engine()
    eng.add([[1, 2, 3]] * 4)
    with pytest.raises(CapacityError, match="at most 4 rows"):
        cpp.make_engine().add([[1, 2]])
    del eng
    assert selar.generate(cpp, PROMPTS, "cot", temperature=0, max_new_tokens=4, batch_size=4)


def test_errors(cpp, tmp_path):
    with pytest.raises(ModelLoadError, match="catalog model .* or a GGUF"):
        selar.load_model("Qwen/Qwen3-8B", engine="llamacpp")
    with pytest.raises(ConfigError, match="transformers engine"):
        selar.load_model("smollm2-135m", engine="llamacpp", dtype="bfloat16")
    with pytest.raises(ConfigError, match="unknown engine"):
        selar.load_model("smollm2-135m", engine="onnx")
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelLoadError):
        selar.load_model(str(bad), engine="llamacpp")
    with pytest.raises(ConfigError, match="transformers engine"):
        cpp.require("logit_lens", "the logit lens")
    with pytest.raises(Exception, match="transformers engine|hidden|adaptive-latent"):
        selar.generate(cpp, ["hi"], "adaptive-latent", max_new_tokens=4)
    long = list(range(100, 1200))
    with pytest.raises(Exception, match="context"):
        selar.generate(cpp, ["long"], "cot", prompt_token_ids=[long], max_new_tokens=4)


def test_cli_generate_and_eval(cpp, tmp_path):
    from click.testing import CliRunner

    from selar.cli import main

    r = CliRunner().invoke(
        main,
        [
            "generate",
            "What is 2 + 2?",
            "--model",
            "smollm2-135m",
            "--engine",
            "llamacpp",
            "--method",
            "selar",
            "-n",
            "12",
            "--temperature",
            "0",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    got = res[0] if isinstance(res, list) else res
    want = selar.generate(cpp, ["What is 2 + 2?"], "selar", temperature=0, max_new_tokens=12)[0]
    assert got["token_ids"] == want.token_ids

    data = tmp_path / "mini.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"What is {a} + {a}?", "answer": str(2 * a)}) for a in (2, 5)))
    r = CliRunner().invoke(
        main,
        [
            "eval",
            "--model",
            "smollm2-135m",
            "--engine",
            "llamacpp",
            "--data",
            str(data),
            "--methods",
            "cot,selar",
            "-n",
            "16",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert r.exit_code == 0, r.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["config"]["engine"] == "llamacpp" and run["model"]["engine"] == "llamacpp"
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4


def test_server_on_llamacpp(cpp):
    openai = pytest.importorskip("openai")
    from selar.server import Settings, start_in_thread

    srv = start_in_thread(cpp, Settings(model_name="smollm2-135m", max_tokens=32, default_max_tokens=16), max_batch=4)
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        results, errors = {}, []

        def ask(i, method):
            try:
                r = client.completions.create(
                    model="smollm2-135m", prompt=PROMPTS[i], max_tokens=12, temperature=0, extra_body={"method": method}
                )
                results[(i, method)] = r.choices[0].text
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=ask, args=(i, m)) for i in range(2) for m in ("cot", "selar")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and len(results) == 4
        for (i, m), text in results.items():
            want = selar.generate(cpp, [PROMPTS[i]], m, temperature=0, max_new_tokens=12, raw=True)[0].text
            assert text == want
    finally:
        srv.stop()


def test_long_prompt_spans_several_prefill_chunks(cpp):
    """A prompt longer than one llama.cpp batch (512 tokens), prefilled in chunks next to a short
    one, still equals llama.cpp's own greedy generation."""
    from selar.engines.llamacpp import llamacpp_greedy

    long = selar.format_prompt(cpp, "Repeat: " + "the cat sat on the mat. " * 110)
    short = selar.format_prompt(cpp, PROMPTS[0])
    assert len(long) > 600
    want = [llamacpp_greedy(cpp, p, 12) for p in (long, short)]
    got = selar.generate(
        cpp, ["long", "short"], "cot", prompt_token_ids=[long, short], temperature=0, max_new_tokens=12, batch_size=2
    )
    assert [r.token_ids for r in got] == want


def test_penalties_in_the_shared_loop(tmp_path):
    """llama.cpp decodes through the shared loop, which applies the penalties before the method's
    step: a tiny model's float32 GGUF drives the session, the same weights on the transformers
    engine are fed its inputs (tests/forced.py) and penalised with the session's per-row counts;
    their penalised logits agree to float32 precision, and so do tokens, gates and soft inputs
    wherever float32 decides them (a tiny fixture, a few steps: fast)."""
    from conftest import make_tokenizer
    from families import make_family_model
    from tiny_gguf import write_gguf

    from selar.engines.llamacpp import LlamaCppModel

    tok = make_tokenizer()
    hf = make_family_model("llama", tok, llamacpp=True)
    path = write_gguf(hf, tok, tmp_path / "llama.gguf", "llama")
    cpp = LlamaCppModel(path, tok, name="tiny", source="gguf", max_rows=4, context=256, kv_type="f32", threads=1,
                        flash_attn=False)  # fmt: skip
    tf = selar.wrap(hf, tok, name="tiny", compile="off")
    try:
        enc = [selar.format_prompt(tf, p) for p in PROMPTS]
        pen = dict(presence_penalty=1.5, frequency_penalty=0.5, repetition_penalty=1.3)
        kw = dict(max_new_tokens=10, tau=0.5, protect_symbols=False)
        rep = forced.compare(cpp, tf.make_engine(), enc, "selar", tol=5e-3, **kw, **pen)
        print("\nllama.cpp (penalised) vs transformers, selar, teacher-forced:", rep)
        rep.assert_ok(min_decided=0.8)
        assert rep.soft_steps > 0
        plain = selar.generate(cpp, PROMPTS, "selar", prompt_token_ids=enc, temperature=0, **kw)
        assert [r.token_ids for r in rep.rows] != [r.token_ids for r in plain]  # the penalties change the text
    finally:
        cpp.close()
