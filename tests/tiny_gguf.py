"""Write a tiny transformers model as a float32 GGUF that llama.cpp runs (what llama.cpp's
convert_hf_to_gguf does for these families, written out for tiny test models: names from the
`gguf` package's tensor map, Llama-style rotary q/k rows permuted, Gemma's `1 + w` norms
stored as such, Qwen3-MoE experts stacked, the tokenizer as a GPT-2 BPE vocabulary)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

ARCH = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3moe",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "phi3": "phi3",
    "granite": "granite",
}
PERMUTED = {"llama", "granite"}  # llama.cpp's rope for these interleaves pairs; HF rotates halves


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer(writer, tok) -> None:
    import gguf

    spec = json.loads(tok.backend_tokenizer.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    n = len(tok)
    tokens = tok.convert_ids_to_tokens(list(range(n)))
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(n)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_add_bos_token(False)


def write_gguf(model, tok, path: Path, family: str) -> Path:
    """`model` (one of tests/families.py's tiny families) as a float32 GGUF at `path`."""
    import gguf

    arch = ARCH[family]
    cfg = model.config
    n_layer, n_head, n_kv = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test model")  # not the family's: llama.cpp patches vocabularies of models named e.g. phi3
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(int(head_dim * getattr(cfg, "partial_rotary_factor", 1.0)))
    w.add_rope_freq_base(float(cfg.rope_theta))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    layer_types = getattr(cfg, "layer_types", None)
    if arch in ("gemma2", "gemma3"):
        w.add_sliding_window(cfg.sliding_window)
        w.add_array(f"{arch}.attention.sliding_window_pattern", [t == "sliding_attention" for t in layer_types])
        if getattr(cfg, "final_logit_softcapping", None):
            w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        if getattr(cfg, "attn_logit_softcapping", None):
            w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        if arch == "gemma3":
            w.add_float32("gemma3.rope.freq_base_swa", float(cfg.rope_local_base_freq))
    elif getattr(cfg, "sliding_window", None) and (getattr(cfg, "use_sliding_window", True)):
        raise ValueError(f"llama.cpp runs {family} without a sliding window; build the model without one")
    if arch == "granite":
        w.add_embedding_scale(cfg.embedding_multiplier)
        w.add_residual_scale(cfg.residual_multiplier)
        w.add_attention_scale(cfg.attention_multiplier)
        w.add_logit_scale(cfg.logits_scaling)
    if arch == "qwen3moe":
        w.add_expert_count(cfg.num_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    _tokenizer(w, tok)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layer)
    sd = {k: v.detach().to(torch.float32).numpy() for k, v in model.state_dict().items()}
    experts: dict[tuple[int, str], dict[int, np.ndarray]] = {}
    for name, data in sd.items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # llama.cpp uses token_embd
        if ".experts." in name:  # model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight
            parts = name.split(".")
            experts.setdefault((int(parts[2]), parts[6]), {})[int(parts[5])] = data
            continue
        if arch in PERMUTED and name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif arch in PERMUTED and name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            data = data + 1.0  # Gemma's RMSNorm multiplies by (1 + w); llama.cpp's by w
        new = "output.weight" if name == "lm_head.weight" else names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise KeyError(f"no GGUF name for {name} ({arch})")
        w.add_tensor(new, np.ascontiguousarray(data))
    kind = {"gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}
    for (i, proj), per in sorted(experts.items()):
        w.add_tensor(f"blk.{i}.{kind[proj]}.weight", np.stack([per[e] for e in sorted(per)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
