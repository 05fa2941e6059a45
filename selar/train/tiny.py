"""A tiny Llama trained from scratch, with a word-level tokenizer built from the data: the model
the CPU demo uses (a pretrained model gains nothing on synthetic arithmetic and costs minutes per
step on two cores)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .data import ANSWER_PREFIX, Example

SPECIALS = ["<pad>", "<eos>", "<unk>"]


def tiny_tokenizer(examples: Sequence[Example]):
    """Whitespace word-level tokenizer over every word of the questions, steps and answers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = set(ANSWER_PREFIX.split())
    for e in examples:
        for text in [e.question, e.answer, *e.steps]:
            words.update(text.split())
    vocab = {w: i for i, w in enumerate(SPECIALS + sorted(words))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def tiny_model(tokenizer, *, hidden: int = 128, layers: int = 4, heads: int = 4, seed: int = 0):
    """A randomly initialised Llama (about 1M parameters at the defaults)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    gen = model.generation_config
    if gen is not None:
        gen.eos_token_id = tokenizer.eos_token_id
        gen.pad_token_id = tokenizer.pad_token_id
    return model
