"""The vLLM engine's registry entry: `load` (selar's Model over a vLLM `LLM`, runner), `sizing`
and `serve` (`selar serve --engine vllm`, launch)."""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from .launch import serve as launch_serve
from .runner import VLLMModel, load_vllm


class _Entry:
    @staticmethod
    def load(
        name: str, *, dtype: Any = "auto", device: str = "auto", trust_remote_code: bool = False, **options: Any
    ) -> VLLMModel:
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError("vLLM places the model itself; give device auto (tensor_parallel_size=N for GPUs)")
        if trust_remote_code:
            options.setdefault("trust_remote_code", True)
        return load_vllm(name, dtype=str(dtype), **options)

    @staticmethod
    def sizing(rows: int, positions: int) -> dict:
        return {"max_num_seqs": rows, "max_model_len": positions}

    @staticmethod
    def serve(model: str, **options: Any) -> None:
        launch_serve(model, **options)


ENTRY = _Entry()
