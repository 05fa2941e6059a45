"""The vLLM plugin on every decoder family it accepts, and its refusals (issue 18).

For each family a tiny random float32 model (written by the test, with the in-process trained
tokenizer of conftest) runs on vLLM through the plugin and on selar's transformers engine:
`cot`, `selar` and `soft-thinking` with one-token mixtures give the same tokens and soft steps,
with rows of different lengths, rows finishing at different steps (a frequent token is the stop
id) and rows joining as others finish (more prompts than vLLM slots). A one-token mixture of
weight 1 is the token itself, so `soft-thinking --max_topk 1` equals `cot` only if the soft path
feeds exactly what the model's own token path does (Gemma's sqrt(hidden) scaling, Granite's
embedding multiplier). vLLM's float32 kernels are other arithmetic than torch's, so besides the
free-running comparison up to where float32 decides the rows, vLLM's rows are replayed on the
transformers engine, teacher-forced, every step of every row fed the record (tests/forced.py,
`replay`, which says which steps it compares). Families the plugin cannot feed are refused before
vLLM starts, by name.
Needs vLLM (see the README's vLLM section); says so loudly, or fails under SELAR_REQUIRE_ENGINES=vllm.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import inspect
import json
import os
import warnings

import pytest

WHY = "vLLM is not installed here (README, 'vLLM engine': the .venv-vllm environment)"
if importlib.util.find_spec("vllm") is None:
    if "vllm" in os.environ.get("SELAR_REQUIRE_ENGINES", "").split(","):
        raise RuntimeError(f"SELAR_REQUIRE_ENGINES asks for the vLLM engine's tests, but {WHY}")
    warnings.warn(f"the vLLM engine's tests are SKIPPED: {WHY}", stacklevel=1)
    pytest.skip(WHY, allow_module_level=True)

import forced  # noqa: E402
import torch  # noqa: E402
from conftest import make_tokenizer, shared_prefix  # noqa: E402

import selar  # noqa: E402
from selar.engines.vllm import NON_STANDARD, check_architecture  # noqa: E402
from selar.engines.vllm.runner import soft_architecture  # noqa: E402
from selar.errors import CapabilityError  # noqa: E402

NUDGE = 1e-5
# How far the replay's logits may be from vLLM's: steps whose top two logits are within 2 TOL are
# not compared (nor, by forced.replay, a row's steps after its first soft input). Measured (the
# largest |logprob difference| over vLLM's top 5 tokens, vLLM's logprobs against the replay's, 24
# steps, soft steps included): 1e-6 to 3e-5 in every family and method but gemma3_text selar, whose
# row 5 parts from vLLM's at step 21 after soft inputs (the transformers engine alone equals vLLM).
TOL = 1e-3
WINDOW = 8  # shorter than the prompts, so sliding-window layers slide
TEXTS = [
    "Natalia sold clips to 48 of her friends in April",
    "How many clips",
    "The answer is 72. First, 48 / 2 = 24.",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes",
    "0 1 2 3 4 5 6 7 8 9 + - * /",
    "x y z a b c and then she sold half as many clips in May",
]


def _config(family: str, tok):
    import transformers as tf

    c = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    gemma = dict(query_pre_attn_scalar=32, hidden_activation="gelu_pytorch_tanh")
    make = {
        "llama": lambda: tf.LlamaConfig(**c),
        "qwen2": lambda: tf.Qwen2Config(**c),
        "qwen3": lambda: tf.Qwen3Config(**c),
        "qwen3_moe": lambda: tf.Qwen3MoeConfig(
            **c,
            moe_intermediate_size=32,
            num_experts=4,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
            norm_topk_prob=True,
        ),
        "mistral": lambda: tf.MistralConfig(**c, sliding_window=WINDOW),
        "gemma": lambda: tf.GemmaConfig(**c, hidden_activation="gelu_pytorch_tanh"),
        "gemma2": lambda: tf.Gemma2Config(  # tied head, as Gemma 2 ships (vLLM's class has no lm_head)
            **{**c, "tie_word_embeddings": True},
            **gemma,
            sliding_window=WINDOW,
            final_logit_softcapping=30.0,
            attn_logit_softcapping=50.0,
        ),
        "gemma3_text": lambda: tf.Gemma3TextConfig(
            **{**c, "num_hidden_layers": 3},
            **gemma,
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        ),
        "phi3": lambda: tf.Phi3Config(**c),
        "granite": lambda: tf.GraniteConfig(
            **c, embedding_multiplier=4.0, residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=2.0
        ),
    }
    return make[family]()


ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "mistral": "MistralForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "granite": "GraniteForCausalLM",
}
ACCEPTED = list(ARCHITECTURES)


@contextlib.contextmanager
def kv_cache_space(gib: str):
    """VLLM_CPU_KVCACHE_SPACE for the vLLM engines started inside (they read it at start)."""
    old = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = gib
    try:
        yield
    finally:
        if old is None:
            del os.environ["VLLM_CPU_KVCACHE_SPACE"]
        else:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = old


def write_model(family: str, folder) -> list[list[int]]:
    """A tiny random `family` model and tokenizer in `folder`; returns the test prompts' ids.
    The stop id is a token that greedy `cot` and `selar` each emit in some rows and not in
    others, so rows end at different steps."""
    from transformers import AutoModelForCausalLM

    tok = make_tokenizer()
    cfg = _config(family, tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        # peaked and flat steps both (a tied head is the embedding too: scaled less)
        model.get_output_embeddings().weight.mul_(2.0 if cfg.tie_word_embeddings else 8.0)
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    ref = selar.wrap(model, tok, name=family)
    ref.stop_ids = []
    half = len(prompts) / 2
    score: dict[int, float] = {}
    for method in ("cot", "selar"):
        rows = selar.generate(ref, TEXTS, method, prompt_token_ids=prompts, temperature=0, max_new_tokens=20)
        for t in set().union(*(r.token_ids[3:] for r in rows)):
            score[t] = score.get(t, 0.0) + abs(sum(t in r.token_ids[3:] for r in rows) - half)
    stop = min(score, key=lambda t: (score[t], t))
    model.config.eos_token_id = stop
    model.generation_config.eos_token_id = stop
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return prompts


@pytest.fixture(scope="module", params=ACCEPTED)
def models(request, tmp_path_factory):
    """(family, transformers float32, [float64, nudged float32], vLLM, prompt ids) of one family."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp(request.param)
    prompts = write_model(request.param, folder)
    ref = selar.load_model(str(folder), dtype="float32")
    ref64 = selar.wrap(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval(), ref.tokenizer)
    # float32 weights nudged by 1e-5 (relative; vLLM's float32 kernels differ from torch's by about that)
    nudged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for w in nudged.parameters():
            w.mul_(1 + NUDGE * torch.randn_like(w))
    refs = [ref64, selar.wrap(nudged, ref.tokenizer)]
    for r in refs:
        r.stop_ids = ref.stop_ids
    # 3 slots for 6 prompts: rows join as others finish; 1 GiB of KV cache (vLLM's CPU default: 4)
    with kv_cache_space("1"):
        vl = selar.load_model(
            str(folder), engine="vllm", dtype="float32", max_num_seqs=3, max_model_len=256, enforce_eager=True
        )
    yield request.param, ref, refs, vl, prompts
    vl.close()


@pytest.mark.arithmetic
@pytest.mark.parametrize(
    "method,opts", [("cot", {}), ("soft-thinking", {"max_topk": 1}), ("selar", {}), ("selar-no-gate", {"k": 5})]
)
def test_family_equals_transformers_engine(models, method, opts):
    """vLLM's rows equal the transformers engine's (float32) wherever float32 arithmetic decides
    them. Free-running: up to the step where the float64 run or a run with weights nudged by 1e-5
    parts from it (tiny random models have near-ties, and long chains of soft steps amplify them),
    and that over most of the steps. Teacher-forced: vLLM's rows replayed on the transformers
    engine, every step of every row fed the record."""
    family, ref, refs, vl, prompts = models
    kw = dict(prompt_token_ids=prompts, temperature=0, max_new_tokens=24, trace=True, **opts)
    want = selar.generate(ref, TEXTS, method, batch_size=6, **kw)
    others = []
    for r in refs:
        try:
            others.append(selar.generate(r, TEXTS, method, batch_size=6, **kw))
        except CapabilityError:  # e.g. MoE experts' grouped matmul has no float64 kernel
            continue
    assert others
    got = selar.generate(vl, TEXTS, method, **kw)
    assert ref.stop_ids == vl.stop_ids and vl.info["architecture"] == "Selar" + ARCHITECTURES[family]
    decided = [min(shared_prefix(w.token_ids, o[i].token_ids) for o in others) for i, w in enumerate(want)]
    assert sum(decided) >= 0.6 * sum(len(w.token_ids) for w in want), f"{family}: too many float32 near-ties"
    for w, g, n in zip(want, got, decided):
        assert g.token_ids[:n] == w.token_ids[:n], family
        assert [t["soft"] for t in g.trace or []][:n] == [t["soft"] for t in w.trace or []][:n], family
        if n == len(w.token_ids):  # decided to the end: the same row, ended the same way
            assert g.token_ids == w.token_ids and g.finish_reason == w.finish_reason, family
    if method != "cot":
        assert sum(r.num_soft_steps for r in want) > 10  # the soft path is exercised
    assert [g.prompt_token_ids for g in got] == prompts
    tokens, soft = [g.token_ids for g in got], [[t["soft"] for t in g.trace] for g in got]
    rep = forced.replay(ref, prompts, tokens, method, tol=TOL, soft=soft, temperature=0, max_new_tokens=24, **opts)
    print(f"\n{family} {method} {opts}, vLLM replayed on the transformers engine:", rep)
    rep.assert_ok(min_decided=0.8)
    if method == "soft-thinking":  # a one-token mixture of weight 1 is the token: exactly cot on vLLM itself
        # free-running, token for token: vLLM against vLLM, identical kernels and batch layout (the
        # same engine and prompts; rows join and finish at the same steps while their tokens agree)
        cot = selar.generate(vl, TEXTS, "cot", prompt_token_ids=prompts, temperature=0, max_new_tokens=24)
        assert [g.token_ids for g in got] == [c.token_ids for c in cot], family


@pytest.mark.arithmetic
@pytest.mark.parametrize("models", ["llama", "qwen3"], indirect=True)  # two families' fixtures suffice
@pytest.mark.parametrize("method", ["cot", "selar"])
def test_penalties_equal_transformers_engine(models, method):
    """Issue 29 part 4: presence 1.5 (Qwen3's recipe), frequency and repetition penalties, which the
    plugin applies itself before the method's step (vLLM's own run after its logits processors).
    vLLM's rows differ from its rows without penalties, and replayed teacher-forced on the
    transformers engine (every step fed vLLM's token, the penalties counted from them) they are
    its own choices wherever float32 decides a step. A few steps on the family's tiny model."""
    family, ref, _, vl, prompts = models
    kw = dict(temperature=0, max_new_tokens=12)
    pen = dict(presence_penalty=1.5, frequency_penalty=0.5, repetition_penalty=1.3)
    got = selar.generate(vl, TEXTS, method, prompt_token_ids=prompts, trace=True, **kw, **pen)
    plain = selar.generate(vl, TEXTS, method, prompt_token_ids=prompts, **kw)
    assert [g.token_ids for g in got] != [p.token_ids for p in plain], family  # the penalties change the rows
    tokens, soft = [g.token_ids for g in got], [[t["soft"] for t in g.trace] for g in got]
    rep = forced.replay(ref, prompts, tokens, method, tol=TOL, soft=soft, **kw, **pen)
    print(f"\n{family} {method} with penalties, vLLM replayed on the transformers engine:", rep)
    rep.assert_ok(min_decided=0.8)
    # cot: every step of every row; selar: up to each row's first soft input (forced.replay)
    assert rep.row_steps == sum(map(len, tokens)) if method == "cot" else rep.row_steps >= len(prompts)


# -- refusals (no vLLM start needed) -----------------------------------------------------------
REFUSED = {  # architecture, model type -> what the message must say
    ("Gemma3nForCausalLM", "gemma3n_text"): "per-layer embeddings",
    ("Gemma4ForCausalLM", "gemma4_text"): "per-layer embeddings",
    ("Qwen3NextForCausalLM", "qwen3_next"): "recurrent",
    ("FalconH1ForCausalLM", "falcon_h1"): "recurrent",
    ("GraniteMoeHybridForCausalLM", "granitemoehybrid"): "recurrent",
    ("MambaForCausalLM", "mamba"): "recurrent",
    ("Qwen2VLForConditionalGeneration", "qwen2_vl"): "multimodal",
    ("Gemma3ForConditionalGeneration", "gemma3"): "multimodal",
    ("BertModel", "bert"): "not a text-generation model",
    ("MyOwnForCausalLM", "my_own"): "transformers backend",
}


@pytest.mark.parametrize("arch,family", list(REFUSED))
def test_refused_families_are_named_before_vllm_starts(tmp_path, arch, family):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": family}))
    with pytest.raises(CapabilityError, match=REFUSED[(arch, family)]) as e:
        selar.load_model(str(tmp_path), engine="vllm")
    assert f"{arch} (model type {family})" in str(e.value)


def test_accepted_families_resolve_to_soft_classes(tmp_path):
    for family, arch in ARCHITECTURES.items():
        (tmp_path / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": family}))
        assert soft_architecture(str(tmp_path)) == "Selar" + arch


def _token_path_uses(fn: ast.FunctionDef) -> list[str]:
    """How a forward(input_ids, ..., inputs_embeds) uses input_ids beyond the embedding: the
    names of calls it passes them to other than an embedding lookup or the inner model."""
    passthrough = {
        "embed_input_ids",
        "embed_tokens",
        "get_input_embeddings",
        "model",
        "transformer",
        "forward",
        "language_model",
        "backbone",
        "decoder",
        "fast_prefill_forward",
        "normal_forward",
    }
    odd = []
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "?")
            args = list(node.args) + [k.value for k in node.keywords]
            if any(isinstance(a, ast.Name) and a.id == "input_ids" for a in args) and name not in passthrough:
                odd.append(name)
    return odd


def test_every_accepted_architecture_embeds_ids_only_once():
    """Reads the installed vLLM's text decoders: each one the plugin accepts feeds its layers
    `inputs_embeds` or the embedding of `input_ids` and uses the ids for nothing else (what the
    soft path relies on); the ones that do more are the refused NON_STANDARD families."""
    from vllm.model_executor.models import ModelRegistry

    accepted, refused, odd = [], [], []
    for arch in sorted(ModelRegistry.get_supported_archs()):
        entry = ModelRegistry.models[arch]
        module = getattr(entry, "module_name", "")
        if arch.startswith("Selar") or not module.startswith("vllm.model_executor.models."):
            continue
        try:
            check_architecture(arch)
        except CapabilityError:
            refused.append(arch)
            continue
        cls = entry.load_model_cls()
        accepted.append(arch)
        tree = ast.parse(inspect.getsource(inspect.getmodule(cls)))
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "forward"):
            takes = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
            if {"input_ids", "inputs_embeds"} <= takes and _token_path_uses(fn):
                odd.append(f"{arch} ({cls.__module__}:{fn.lineno}) passes input_ids to {_token_path_uses(fn)}")
    assert not odd, odd
    assert {"LlamaForCausalLM", "Gemma3ForCausalLM", "GraniteForCausalLM"} <= set(accepted)
    assert set(NON_STANDARD) <= set(refused)
    assert len(accepted) > 40
