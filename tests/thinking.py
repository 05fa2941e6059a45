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
    """(a Qwen2.5-style BPE tokenizer, which one): the catalog's Qwen2.5 when pulled, else SmolLM2's."""
    from transformers import AutoTokenizer

    from selar import catalog

    entry = catalog.CATALOG["qwen2.5-coder-0.5b"]
    if catalog.is_pulled(entry):
        return AutoTokenizer.from_pretrained(str(catalog.model_dir(entry))), "qwen2.5-coder-0.5b"
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


def tiny_qwen3(tok, seed: int = 0):
    """The tiny Qwen3 thinking model over `tok` (see the module docstring)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    d = 64
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    cfg = Qwen3Config(
        vocab_size=max(len(tok), max(THINK_IDS.values()) + 1),
        hidden_size=d,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
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
        chain = [think, *words]
        for a, b in zip(chain, chain[1:]):  # a deterministic chain, each step unsure among the words
            go(a, b, 12.0)
            for w in words:
                if w != b:
                    go(a, w, 10.5)
        go(words[-1], end, 24.0)
        go(end, blank, 24.0)
        go(blank, answers[0], 12.0)
        go(blank, answers[1], 11.5)
        for a in answers:
            go(a, im_end, 24.0)
    model.generation_config.eos_token_id = [im_end, tok.pad_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def thinking_model():
    import selar

    tok = qwen3_tokenizer()
    return selar.wrap(tiny_qwen3(tok), tok, name="tiny-qwen3")
