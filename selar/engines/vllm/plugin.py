"""The pieces vLLM loads: the `vllm.general_plugins` entry point (`register`), the V1 logits
processor and the worker extension. Their import paths are the constants below; vLLM's own
classes are imported only inside vLLM's processes."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from ...errors import ConfigError
from ...methods.base import VocabInfo
from ..base import THINK_TOKENS
from .models import PREFIX as CLASS_PREFIX
from .models import soft_name
from .request import parse_request
from .state import SoftState, current_state, set_state

LOGITS_PROCESSOR = "selar.engines.vllm.plugin:SelarLogitsProcessor"
WORKER_EXTENSION = "selar.engines.vllm.plugin.WorkerExtension"
MODEL_CLASSES = "selar.engines.vllm.models"


def register() -> None:
    """The `vllm.general_plugins` entry point: a lazily built soft-input class `Selar<Arch>` for
    every architecture vLLM knows (built, and its family checked, only when a model asks for it)."""
    from vllm import ModelRegistry

    known = set(ModelRegistry.get_supported_archs())
    for arch in sorted(known):
        name = soft_name(arch)
        if not arch.startswith(CLASS_PREFIX) and name not in known:
            ModelRegistry.register_model(name, f"{MODEL_CLASSES}:{name}")


def vocab_info(vllm_config: Any) -> VocabInfo:
    from transformers import AutoTokenizer

    mc = vllm_config.model_config
    tok = AutoTokenizer.from_pretrained(
        mc.tokenizer, trust_remote_code=mc.trust_remote_code, revision=mc.tokenizer_revision
    )
    vocab = tok.get_vocab()
    start, end = (vocab.get(t) for t in THINK_TOKENS)
    return VocabInfo(size=mc.get_vocab_size(), think_start=start, think_end=end, tokenizer=tok)


def validate_params(params: Any) -> None:
    """A request's selar options, checked at admission (both runners' processors)."""
    try:
        parse_request(params)
    except ConfigError as e:  # vLLM answers ValueError with HTTP 400
        raise ValueError(str(e)) from None


def check_config(vllm_config: Any) -> None:
    """What the plugin needs of vLLM's configuration (both runners' processors)."""
    if vllm_config.cache_config.enable_prefix_caching:
        raise ValueError(
            "selar's vLLM plugin needs prefix caching off (--no-enable-prefix-caching): "
            "cached blocks would carry soft inputs into other requests"
        )
    if getattr(vllm_config, "speculative_config", None) is not None:
        raise ValueError("selar's vLLM plugin runs one logits row per request: turn speculative decoding off")


def _make_processor_class() -> type:
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

    class SelarLogitsProcessor(LogitsProcessor):
        """Runs a selar method for the requests that ask for one (extra_args selar_method)."""

        @classmethod
        def validate_params(cls, params: Any) -> None:
            validate_params(params)

        def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
            check_config(vllm_config)
            cap = vllm_config.scheduler_config.max_num_seqs
            self.state = SoftState(cap, device, vocab_info(vllm_config))
            set_state(self.state)

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update: Optional[BatchUpdate]) -> None:
            if batch_update is None:
                return
            s = self.state
            for i in batch_update.removed:
                s.clear(i)
            for i, params, prompt_ids, output_ids in batch_update.added:
                s.add(i, params, prompt_ids, output_ids)
            for a, b, direction in batch_update.moved:
                s.move(a, b, direction == MoveDirectionality.SWAP)

        def apply(self, logits: Tensor) -> Tensor:
            return self.state.apply(logits)

    return SelarLogitsProcessor


def __getattr__(name: str) -> Any:  # the processor subclasses vLLM's class, so it is built on first use
    if name == "SelarLogitsProcessor":
        cls = _make_processor_class()
        cls.__module__ = __name__
        globals()[name] = cls
        return cls
    raise AttributeError(name)


class WorkerExtension:
    """Mixed into vLLM's workers (`worker_extension_cls`): lets the runner fetch soft-step records."""

    def selar_records(self, keys: list[str]) -> dict:
        s = current_state()
        if s is None:
            return {}
        out = {k: s.records.pop(k) for k in keys if k in s.records}
        for i, k in enumerate(s.keys):  # finished but not yet removed from the batch
            if k is not None and k in keys and k not in out:
                out[k] = s.record(i)
        return out
