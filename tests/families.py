"""Tiny randomly initialised models of every architecture family the matrix covers (float32,
a few layers of width 64, built in-process in well under a second each; nothing downloaded).

Each family uses small sliding windows (8 positions) where it has sliding-window layers, so
prompts of 20-40 tokens plus generation cross the window; hybrids mix attention layers with
linear-attention (Qwen3-Next) or Mamba-2 (Falcon-H1, Granite 4) layers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

WINDOW = 8  # sliding window of the families that have one (shorter than the prompts)


def _common(vocab: int, eos: int, pad: int) -> dict:
    return dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=None,
        tie_word_embeddings=False,
    )


def _llama(c):
    from transformers import LlamaConfig

    return LlamaConfig(**c)


def _qwen2(c):
    from transformers import Qwen2Config

    # the upper layer slides (max_window_layers=1), the lower attends to everything
    return Qwen2Config(**c, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)


def _qwen3(c):
    from transformers import Qwen3Config

    return Qwen3Config(**c, head_dim=16)


def _qwen3_moe(c):
    from transformers import Qwen3MoeConfig

    # the upper layer is a mixture of experts (torch's index_add_ in its router is slow on CPUs: one is enough)
    return Qwen3MoeConfig(
        **{**c, "intermediate_size": 128},
        head_dim=16,
        moe_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        decoder_sparse_step=2,
        norm_topk_prob=True,
    )


def _mistral(c):
    from transformers import MistralConfig

    return MistralConfig(**c, sliding_window=WINDOW)


def _gemma2(c):
    from transformers import Gemma2Config

    return Gemma2Config(
        **c,
        head_dim=16,
        sliding_window=WINDOW,
        query_pre_attn_scalar=16,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
        hidden_activation="gelu_pytorch_tanh",
    )


def _gemma3(c):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        **{**c, "num_hidden_layers": 3},
        head_dim=16,
        sliding_window=WINDOW,
        query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    )


def _phi3(c):
    from transformers import Phi3Config

    return Phi3Config(**c, sliding_window=WINDOW)


def _granite(c):
    from transformers import GraniteConfig

    return GraniteConfig(
        **c, embedding_multiplier=4.0, residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=2.0
    )


def _qwen3_next(c):
    from transformers import Qwen3NextConfig

    # dense MLPs (the experts are covered by qwen3_moe): the point here is the hybrid cache
    return Qwen3NextConfig(
        **{**c, "num_hidden_layers": 3},
        head_dim=16,
        layer_types=["linear_attention", "full_attention", "linear_attention"],
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_conv_kernel_dim=4,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        mlp_only_layers=[0, 1, 2],
    )


def _falcon_h1(c):
    from transformers import FalconH1Config

    return FalconH1Config(
        **c,
        head_dim=16,
        mamba_d_ssm=64,
        mamba_n_heads=4,
        mamba_d_head=16,
        mamba_n_groups=1,
        mamba_d_state=16,
        mamba_d_conv=4,
        mamba_expand=1,
        mamba_chunk_size=16,
        embedding_multiplier=3.0,
        lm_head_multiplier=2.0,
    )


def _granitemoehybrid(c):
    from transformers import GraniteMoeHybridConfig

    return GraniteMoeHybridConfig(
        **{**c, "num_hidden_layers": 3},
        layer_types=["mamba", "attention", "mamba"],
        mamba_n_heads=4,
        mamba_d_head=16,
        mamba_n_groups=1,
        mamba_d_state=16,
        mamba_d_conv=4,
        mamba_expand=1,
        mamba_chunk_size=16,
        num_local_experts=0,
        shared_intermediate_size=128,
        embedding_multiplier=4.0,
        logits_scaling=2.0,
        position_embedding_type="rope",
    )


FAMILIES: dict[str, Callable[[dict], Any]] = {
    "llama": _llama,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "mistral": _mistral,
    "gemma2": _gemma2,
    "gemma3_text": _gemma3,
    "phi3": _phi3,
    "granite": _granite,
    "qwen3_next": _qwen3_next,
    "falcon_h1": _falcon_h1,
    "granitemoehybrid": _granitemoehybrid,
}
HYBRID = {"qwen3_next", "falcon_h1", "granitemoehybrid"}


# as llama.cpp runs them: its llama, qwen2 and phi3 graphs have no sliding window (a Mistral or
# Qwen2 GGUF attends to everything), and its qwen3moe graph has experts in every layer
LLAMACPP = {
    "mistral": {"sliding_window": None},
    "qwen2": {"use_sliding_window": False, "sliding_window": None},
    "phi3": {"sliding_window": None},
    "qwen3_moe": {"decoder_sparse_step": 1},
    "gemma2": {"tie_word_embeddings": True},
}  # llama.cpp's gemma2 has no separate output head


def make_family_model(family: str, tok, seed: int = 0, head_scale: float = 8.0, llamacpp: bool = False):
    """A tiny random `family` causal LM over `tok`'s vocabulary, float32, in eval mode. Its
    output head is scaled by `head_scale` so that next-token distributions range from flat to
    peaked (SeLaR's gate then goes both ways, and greedy near-ties are rare). `llamacpp`: the
    variant llama.cpp's graph for the family computes (see LLAMACPP)."""
    from transformers import AutoModelForCausalLM

    cfg = FAMILIES[family](_common(len(tok), tok.eos_token_id, tok.pad_token_id))
    for k, v in (LLAMACPP.get(family, {}) if llamacpp else {}).items():
        setattr(cfg, k, v)
    if llamacpp and hasattr(cfg, "layer_types") and family in ("mistral", "qwen2", "phi3"):
        cfg.layer_types = ["full_attention"] * cfg.num_hidden_layers
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa").eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(head_scale)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def token_rows(model, family: str, ids: torch.Tensor) -> torch.Tensor:
    """What the model's own input_ids path feeds its first layer for these ids, written out per
    family (independently of the engine's probe): the embedding module's rows, times Falcon-H1's
    `embedding_multiplier`, which that family applies to token ids only."""
    rows = model.get_input_embeddings()(ids)
    return rows * model.config.embedding_multiplier if family == "falcon_h1" else rows
