"""A thinking model that behaves like Qwen3 in everything but its weights, for tests.

- Tokenizer: Qwen2.5's from the catalog (`qwen2.5-coder-0.5b`, when pulled; else SmolLM2's,
  from the packaged GGUF, padded with unreachable filler tokens), with Qwen3's added tokens at
  Qwen3's ids: <tool_response> 151665, </tool_response> 151666, <think> 151667, </think> 151668
  (added, not special: kept in decoded text), <|im_end|> as EOS.
- Chat template: Qwen3's `enable_thinking` behaviour. On (the default), the prompt ends with the
  assistant header and the model opens <think> itself; off, the prompt holds an empty think
  block, `<think>\\n\\n</think>\\n\\n`.
- Model: a tiny random Qwen3 (width 64) whose weights are arranged so that it acts like a
  thinking model, greedy and deterministic: after the assistant header it writes <think>, then
  reasoning tokens among which it is uncertain (SeLaR goes soft there), then ".", </think>, a
  blank line, an answer among two tokens it is unsure of (soft, if soft inputs were allowed
  after </think>), then <|im_end|>. Its layers are scaled down so the residual stream carries the
  current input's embedding to the output head, which holds these transitions on orthogonal
  embedding directions.
"""

from __future__ import annotations

import json

import torch

THINK_IDS = {"<tool_response>": 151665, "</tool_response>": 151666, "<think>": 151667, "</think>": 151668}
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- set content = message['content'] %}"
    "{%- if message['role'] == 'assistant' and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)
REASONING = [" step", " so", " then", "."]  # the words it reasons with; "." closes the think block
ANSWERS = [" yes", " no"]


def base_tokenizer():
    """(a Qwen2.5-style BPE tokenizer, which one): SmolLM2's, packaged and present wherever the tests
    run (not the catalog's Qwen2.5 when it happens to be pulled: the fixtures must be the same on
    every machine, CI's included)."""
    from transformers import AutoTokenizer

    from selar import catalog

    path = catalog.gguf_file("smollm2-135m")
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name), "smollm2-135m"


def qwen3_tokenizer():
    """The base tokenizer with Qwen3's added tokens at Qwen3's ids and Qwen3's chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    base, source = base_tokenizer()
    spec = json.loads(base.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    first = min(THINK_IDS.values())
    for i in range(first):  # pad a shorter vocabulary with entries no merge can produce
        if i not in by_id:
            vocab[f"<|selar_filler_{i}|>"] = i
    for text, i in THINK_IDS.items():
        if i in by_id:  # a placeholder in the base vocabulary (Qwen2.5's "[PAD151667]")
            del vocab[by_id[i]]
        vocab[text] = i
    spec["added_tokens"] = [a for a in spec["added_tokens"] if a["id"] not in THINK_IDS.values()] + [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": False,
        }
        for t, i in THINK_IDS.items()
    ]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>" if "<|endoftext|>" in vocab else "<|im_end|>",
    )
    tok.chat_template = QWEN3_TEMPLATE
    tok.selar_source = source
    return tok


def _one(tok, text: str) -> int:
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, ids)
    return ids[0]


def tiny_qwen3(tok, seed: int = 0, uncertain_end: bool = False, head_dim: int = 16):
    """The tiny Qwen3 thinking model over `tok` (see the module docstring). `uncertain_end`: a short
    reasoning, <think> " step" "." </think>, whose first step is unsure among the words and whose
    step that writes </think> is unsure too (</think> ahead of two words by 0.4 logits: a normalised
    top-3 entropy of 0.99), so every soft method would feed a mixture there. `head_dim`: 32 for
    vLLM's CPU attention (16 is not among its kernels)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    d = 64
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    cfg = Qwen3Config(
        vocab_size=max(len(tok), max(THINK_IDS.values()) + 1),
        hidden_size=d,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=d // head_dim,
        num_key_value_heads=max(1, d // head_dim // 2),
        head_dim=head_dim,
        max_position_embeddings=1024,
        eos_token_id=[im_end, tok.pad_token_id],
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg).eval()
    nl = _one(tok, "\n")
    blank = _one(tok, "\n\n")
    think, end = THINK_IDS["<think>"], THINK_IDS["</think>"]
    words = [_one(tok, w) for w in REASONING]
    answers = [_one(tok, a) for a in ANSWERS]
    states = [nl, think, *words, end, blank, *answers]  # tokens whose next token is arranged
    with torch.no_grad():
        for p in model.model.layers.parameters():
            p.mul_(0.1)  # the residual stream carries the input's embedding to the head
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        basis = torch.eye(d)[: len(states)] * 1.0
        for i, t in enumerate(states):
            emb[t] = basis[i] * 8.0  # orthogonal directions (the final norm rescales to |8|)

        def go(src: int, dst: int, logit: float):
            head[dst] += basis[states.index(src)] * logit / 8.0

        go(nl, think, 24.0)
        chain = [think, words[0], words[-1]] if uncertain_end else [think, *words]
        for a, b in zip(chain, chain[1:]):  # a deterministic chain, each step unsure among the words
            go(a, b, 12.0 if a == think or not uncertain_end else 24.0)
            for w in words:
                if w != b and (a == think or not uncertain_end):
                    go(a, w, 10.5)
        if uncertain_end:  # "." -> </think>, unsure
            go(words[-1], end, 12.0)
            for w in words[:2]:
                go(words[-1], w, 11.6)
        else:
            go(words[-1], end, 24.0)
        go(end, blank, 24.0)
        go(blank, answers[0], 12.0)
        go(blank, answers[1], 11.5)
        for a in answers:
            go(a, im_end, 24.0)
    model.generation_config.eos_token_id = [im_end, tok.pad_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def thinking_model(uncertain_end: bool = False, **wrap):
    import selar

    tok = qwen3_tokenizer()
    return selar.wrap(tiny_qwen3(tok, uncertain_end=uncertain_end), tok, name="tiny-qwen3", **wrap)


# -- the soft-scope checks every engine runs on this model (issue 28) ----------------------------
SOFT_METHODS = (
    "selar",
    "selar-no-gate",
    "selar-no-push",
    "soft-thinking",
    "swir",
    "soft-thinking-gumbel",
    "soft-thinking-dirichlet",
    "moi",
    "thinkrouter",
    "multiplex",
)
QUESTIONS = ["What is 2 + 2?", "Is the sky blue?"]


def chat(model, question: str, thinking: bool) -> list[int]:
    text = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True, enable_thinking=thinking
    )
    return model.tokenizer.encode(text, add_special_tokens=False)


class _Recorder:
    """A step-wise engine that records the input it is asked to feed each step (one row)."""

    def __init__(self, inner):
        self.inner, self.fed = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def add(self, prompts):
        return self.inner.add(prompts)

    def step(self, inputs):
        self.fed.append(inputs)
        return self.inner.step(inputs)

    def select(self, keep):
        return self.inner.select(keep)

    def reset(self):
        return self.inner.reset()


class _RawSoft:
    """The session's method, its own soft flags recorded before the decode layer's scope rules."""

    def __init__(self, method):
        self.method, self.raw = method, []
        self.name, self.num_candidates = method.name, method.num_candidates

    def init_state(self, n, device):
        return self.method.init_state(n, device)

    def step(self, ctx, state):
        out = self.method.step(ctx, state)
        self.raw.append(bool(out.soft[0]))
        return out


def dense_input(mix, vocab_size: int):
    import torch

    if mix.ids is None:
        return mix.weights[0].float()
    return torch.zeros(vocab_size).index_add_(0, mix.ids[0], mix.weights[0].float())


def run_recorded(model, prompt: list[int], method: str, max_new_tokens: int = 24, **opts):
    """One row decoded by `model`'s step-wise engine: (row, the inputs fed, the method's own soft flags)."""
    from selar.decode import new_session, run_to_end
    from selar.methods import make_config

    s = new_session(model, make_config(method, temperature=0, max_new_tokens=max_new_tokens, **opts))
    s.engine, s.method = _Recorder(s.engine), _RawSoft(s.method)
    (row,) = run_to_end(s, [prompt], [opts.get("seed", 0)])
    return row, s.engine.fed, s.method.raw


# SwiR back in latent mode by the </think> step (else explicit there); ThinkRouter latent there (else
# discrete); Gumbel soft thinking's token is a draw of p: seed 5's at that step is </think> (by 1.6)
METHOD_OPTIONS = {
    "swir": {"window": 1},
    "thinkrouter": {"tau": 0.0},
    "soft-thinking-gumbel": {"seed": 5},
    "multiplex": {"width": 8},  # 3 draws agree at every reasoning step of the fixture; 8 differ once
}


def check_think_end_is_fed_plainly(model, method: str) -> int:
    """An uncertain step that emits </think> (the method itself would feed a mixture there) feeds
    exactly E(</think>) next (a one-hot mixture: the engine embeds the token), and every later
    input is the emitted token; returns that step's index."""
    import torch

    row, fed, raw = run_recorded(model, chat(model, QUESTIONS[0], True), method, **METHOD_OPTIONS.get(method, {}))
    toks, end, V = row.token_ids, model.think_end, model.vocab_size
    assert end in toks, (method, toks)
    e = toks.index(end)
    assert raw[e], f"{method}: the step that writes </think> is not uncertain here, so it proves nothing"
    assert any(row.soft[:e]) and not any(row.soft[e:]), (method, row.soft)
    for k in range(e, min(len(fed), len(toks))):
        want = torch.nn.functional.one_hot(torch.tensor(toks[k]), V).float()
        assert torch.equal(dense_input(fed[k], V), want), (method, k)
    return e


def check_swir_budget_ends_the_row(model) -> None:
    """SwiR with C = 1 on a prompt that opens <think> (as R1-style templates do), EOS ignored so only
    the budget can end the row: </think> injected, then </think> + the answer prefix, then the row
    stops ("method"), with no soft input after the first </think>. beta0=0: the switch to explicit
    feeds about E(</think>), after which the fixture writes "\n\n", not </think> (a row whose model
    writes </think> itself at the injection is locked explicit, as in the reference, and never
    reaches the budget: the fixture's chain ". -> </think>" would, fed mostly E("."))."""
    prompt = chat(model, QUESTIONS[0], True) + [model.think_start]
    opts = dict(max_switch_count=1, window=1, beta0=0.0, ignore_eos=True)
    row, fed, _ = run_recorded(model, prompt, "swir", max_new_tokens=300, **opts)
    assert row.finish_reason == "method" and len(row.token_ids) < 100, (row.finish_reason, len(row.token_ids))
    e = row.token_ids.index(model.think_end)
    assert "The final answer is" in model.tokenizer.decode(row.token_ids[e:])
    assert not any(row.soft[e:])


def check_closed_think_prompt_has_no_soft_input(model, method: str) -> None:
    """A Qwen3 prompt with thinking off (its template closes an empty think block): no soft step."""
    row, fed, _ = run_recorded(model, chat(model, QUESTIONS[1], False), method, max_new_tokens=12)
    assert row.soft == [False] * len(row.token_ids) and row.token_ids, (method, row)
    assert all(int(dense_input(m, model.vocab_size).count_nonzero()) == 1 for m in fed)
