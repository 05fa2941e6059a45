"""Multimodal wrappers of text models (issue 29, part 5) on the transformers engine: their text
path runs (the wrapper's own text-only `generate` is the independent computation), or the load is
refused naming the class and the reason. (vLLM refuses multimodal classes at load:
tests/test_vllm_families.py; a GGUF holds the text decoder alone, its projector apart.)"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tokenizer

import selar
from selar.errors import ModelLoadError

PROMPTS = ["How many clips did Natalia sell?", "2 + 3 ="]


def _text(tok, **kw):
    return dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, **kw)  # fmt: skip


def _save(model, tok, folder):
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)  # peaked and flat steps both
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _greedy_equals_own_generate(model_dir, hf):
    m = selar.load_model(str(model_dir), dtype="float32", compile="off")
    ids = [m.tokenizer(p)["input_ids"] for p in PROMPTS]
    got = selar.generate(m, PROMPTS, "cot", prompt_token_ids=ids, temperature=0, max_new_tokens=12)
    for p, r in zip(ids, got):
        want = hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=None)[0, len(p) :]
        assert r.token_ids == want.tolist()[: len(r.token_ids)] and len(r.token_ids) > 3
    soft = selar.generate(
        m, PROMPTS, "selar-no-gate", prompt_token_ids=ids, temperature=0, max_new_tokens=6, protect_symbols=False
    )
    assert all(r.num_soft_steps > 0 for r in soft)  # soft inputs reach its text decoder
    return m


def test_llava_runs_its_text_decoder(tmp_path):
    import transformers as tf

    tok = make_tokenizer()
    cfg = tf.LlavaConfig(
        text_config=tf.LlamaConfig(**_text(tok)).to_dict(),
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            projection_dim=32,
        ),  # fmt: skip
        image_token_index=len(tok) - 1,
    )
    torch.manual_seed(0)
    hf = tf.LlavaForConditionalGeneration(cfg).eval()
    folder = _save(hf, tok, tmp_path / "llava")
    m = _greedy_equals_own_generate(folder, hf)
    assert type(m.hf_model).__name__ == "LlamaForCausalLM"
    assert m.hf_model.config.selar_text_of == "LlavaForConditionalGeneration"


def test_gemma3_wrapper_runs_as_transformers_loads_it(tmp_path):
    import transformers as tf

    tok = make_tokenizer()
    text = tf.Gemma3TextConfig(**_text(tok, head_dim=32, sliding_window=512, query_pre_attn_scalar=32))
    vision = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                   image_size=28, patch_size=14)  # fmt: skip
    special = dict(image_token_index=len(tok) - 1, boi_token_index=len(tok) - 2, eoi_token_index=len(tok) - 3)
    cfg = tf.Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4, **special)
    torch.manual_seed(0)
    hf = tf.Gemma3ForConditionalGeneration(cfg).eval()
    m = _greedy_equals_own_generate(_save(hf, tok, tmp_path / "gemma3"), hf)
    assert type(m.hf_model).__name__ == "Gemma3ForConditionalGeneration"


def test_a_wrapper_without_a_plain_text_decoder_is_refused_naming_it(tmp_path):
    import transformers as tf

    tok = make_tokenizer()
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
    cfg = tf.Qwen2_5_VLConfig(text_config=_text(tok), vision_config=vision)
    folder = _save(tf.Qwen2_5_VLForConditionalGeneration(cfg), tok, tmp_path / "qwen2_5_vl")
    with pytest.raises(
        ModelLoadError, match=r"Qwen2_5_VLForConditionalGeneration is a multimodal model .*qwen2_5_vl_text"
    ):
        selar.load_model(str(folder), dtype="float32")
