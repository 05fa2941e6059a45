"""Soft-input model classes for vLLM, one per architecture vLLM serves, built on demand.

`Selar<Arch>` is vLLM's own `<Arch>` class with only its outer `forward` overridden: it always
passes `inputs_embeds`, built with the model's own token embedding (`embed_input_ids`, which
holds any scaling, e.g. Gemma's sqrt(hidden size)) and with the rows that have a stored mixture
replaced by `sum_j w_j E(v_j)` (see `state.SoftState.embed`). That equals what the model's token
path gives for a mixture whenever the token path is "embed the ids, then run the layers on the
embeddings", so any such decoder works without a hand-written class. Families whose token path
does more with the ids, and model kinds the plugin was not built for, are refused by name at
start-up (`check_architecture`). Imported by vLLM through its registry (see `plugin.register`).
"""

from __future__ import annotations

import inspect
from typing import Any

from ...errors import CapabilityError
from .state import current_state

PREFIX = "Selar"
# Text decoders whose token path uses the ids beyond one embedding lookup, so a mixture of
# embeddings cannot stand for a token (found by reading every text-generation model of vLLM
# 0.32; tests/test_vllm_families.py rechecks the installed vLLM's sources).
NON_STANDARD = {
    "Gemma3nForCausalLM": "its per-layer embeddings are looked up from the token ids",
    "Gemma4ForCausalLM": "its per-layer embeddings are looked up from the token ids",
    "MuseGlimmerForCausalLM": "its embedding is normalised row by row (a mixture of normalised rows is not a "
    "normalised mixture)",
}

MULTIMODAL = "it is a multimodal model (the plugin feeds text-only decoders)"


def soft_name(arch: str) -> str:
    """The registered name of `arch`'s soft-input class."""
    return PREFIX + arch


def _refuse(arch: str, why: str, family: str = "") -> CapabilityError:
    named = f"{arch} (model type {family})" if family else arch
    return CapabilityError(f"selar's vLLM plugin cannot feed soft inputs to {named}: {why}")


def base_class(arch: str, family: str = "") -> Any:
    """vLLM's class of `arch`, once it is known to have a standard embedding path; CapabilityError
    naming the family and the reason otherwise."""
    from vllm.model_executor.models import ModelRegistry, is_pooling_model, is_text_generation_model, registry
    from vllm.model_executor.models.interfaces import (
        has_inner_state,
        is_attention_free,
        is_hybrid,
        supports_multimodal,
    )

    if arch.startswith(PREFIX):
        raise _refuse(arch, "it is already a soft-input class", family)
    entry = ModelRegistry.models.get(arch)
    if entry is None:
        raise _refuse(
            arch,
            "vLLM has no class of its own for it (it would run it through its transformers "
            "backend, whose forward the plugin does not wrap)",
            family,
        )
    if arch in NON_STANDARD:
        raise _refuse(arch, NON_STANDARD[arch], family)
    if arch in getattr(registry, "_MULTIMODAL_MODELS", {}):  # before importing it (it may need torchvision)
        raise _refuse(arch, MULTIMODAL, family)
    if arch in getattr(registry, "_TRANSFORMERS_BACKEND_MODELS", {}):
        raise _refuse(arch, "it is vLLM's transformers backend, whose forward the plugin does not wrap", family)
    if arch in getattr(registry, "_SPECULATIVE_DECODING_MODELS", {}):
        raise _refuse(arch, "it is a speculative-decoding draft model, not a model vLLM serves on its own", family)
    try:
        cls: Any = entry.load_model_cls()
    except Exception as e:
        raise _refuse(arch, f"vLLM cannot import its class here ({type(e).__name__}: {e})", family) from None
    if is_pooling_model(cls) or not is_text_generation_model(cls):
        raise _refuse(arch, "it is not a text-generation model", family)
    if supports_multimodal(cls):
        raise _refuse(arch, MULTIMODAL, family)
    if is_hybrid(cls) or has_inner_state(cls) or is_attention_free(cls):
        raise _refuse(
            arch,
            "it keeps a recurrent (Mamba or linear-attention) state, which the plugin's row "
            "bookkeeping has not been verified with",
            family,
        )
    params = inspect.signature(cls.forward).parameters
    if not hasattr(cls, "embed_input_ids") or not {"input_ids", "positions", "inputs_embeds"} <= params.keys():
        raise _refuse(
            arch,
            "its forward takes no inputs_embeds beside input_ids and positions (no standard embedding path)",
            family,
        )
    return cls


def check_architecture(arch: str, family: str = "") -> str:
    """The soft-input class name of a model's architecture, or CapabilityError naming the family
    and why the plugin refuses it (called before vLLM starts)."""
    base_class(arch, family)
    return soft_name(arch)


def soft_class(arch: str) -> type:
    base: Any = base_class(arch)
    takes_intermediate = "intermediate_tensors" in inspect.signature(base.forward).parameters

    def forward(
        self: Any,
        input_ids: Any,
        positions: Any,
        intermediate_tensors: Any = None,
        inputs_embeds: Any = None,
        **kw: Any,
    ) -> Any:
        # always pass inputs_embeds, so the compiled inner model sees one signature
        if inputs_embeds is None and input_ids is not None:
            state = current_state()
            inputs_embeds = (
                self.embed_input_ids(input_ids) if state is None else state.embed(self, input_ids, positions)
            )
        if takes_intermediate:
            kw["intermediate_tensors"] = intermediate_tensors
        return base.forward(self, input_ids=input_ids, positions=positions, inputs_embeds=inputs_embeds, **kw)

    def get_model_state_cls() -> type:  # read by Model Runner V2 only (see v2)
        from .v2 import model_state_class

        return model_state_class(base)

    return type(
        soft_name(arch),
        (base,),
        {
            "forward": forward,
            "get_model_state_cls": staticmethod(get_model_state_cls),
            "__module__": __name__,
            "__doc__": f"{arch} with selar's soft inputs.",
        },
    )


def __getattr__(name: str) -> type:
    if not name.startswith(PREFIX):
        raise AttributeError(name)
    cls = soft_class(name[len(PREFIX) :])
    globals()[name] = cls
    return cls
