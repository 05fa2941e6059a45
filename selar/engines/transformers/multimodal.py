"""Multimodal wrappers of text models (LLaVA, Mistral 3, ...: `...ForConditionalGeneration`) on
the transformers engine: selar decodes text, so it runs their text decoder alone, built from the
checkpoint's `text_config` with the language model's weights; a wrapper whose text decoder
transformers has no causal-LM class for is refused at load, naming the class and the reason.
(Wrappers that transformers' own `AutoModelForCausalLM` already loads, e.g. Gemma 3's, run as
they load: their forward takes text alone.)"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ...errors import ModelLoadError

# where a wrapper keeps its text decoder's weights (new layout, then the older one) -> the causal LM's
PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
            ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head."))  # fmt: skip


def is_wrapper(config: Any) -> bool:
    return getattr(config, "text_config", None) is not None and getattr(config, "vision_config", None) is not None


def text_decoder(path: str, config: Any, dtype: torch.dtype, local_only: bool) -> Any:
    """The text decoder of the multimodal checkpoint at `path` (a folder or hub id) as a causal LM
    with the checkpoint's language-model weights; ModelLoadError naming the class and the reason
    when there is none to run."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    text = config.text_config
    if text.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(
            f"{arch} is a multimodal model whose text decoder ({text.model_type}) transformers has no "
            f"causal-LM class for (e.g. its positions are not a plain sequence), so selar cannot run its text path"
        )
    folder = Path(path) if os.path.isdir(path) else _snapshot(path, local_only)
    state = {}
    for key, tensor in _weights(folder).items():
        for old, new in PREFIXES:
            if key.startswith(old):
                state[new + key[len(old) :]] = tensor
                break
    if not state:
        raise ModelLoadError(f"{arch} at {path} holds no language-model weights selar recognises")
    model = AutoModelForCausalLM.from_config(text, dtype=dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if text.tie_word_embeddings:
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelLoadError(
            f"the text decoder of {arch} does not match its checkpoint's weights "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    model.config.architectures = [type(model).__name__]
    model.config.selar_text_of = arch
    return model


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    )
    out: dict[str, torch.Tensor] = {}
    for f in files:
        if not (folder / f).is_file():
            raise ModelLoadError(f"{folder} has no {f}: selar reads a multimodal model's text weights from safetensors")
        out.update(load_file(str(folder / f)))
    return out


def _snapshot(repo: str, local_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, local_files_only=local_only, allow_patterns=["*.json", "*.safetensors"]))
