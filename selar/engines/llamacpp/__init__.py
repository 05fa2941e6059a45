"""The llama.cpp engine (`pip install 'selar[llamacpp]'`): `gguf` finds and converts GGUF files,
`model` loads one into a llama.cpp context, `engine` decodes rows on it step by step."""

from .engine import LlamaCppEngine, _Batch
from .gguf import GGUF_TYPES, convert_gguf, embedding_table, resolve_gguf
from .model import DEFAULT_CONTEXT, DEFAULT_MAX_ROWS, ENTRY, KV_TYPES, LlamaCppModel, llamacpp_greedy, load_llamacpp

__all__ = [
    "LlamaCppEngine",
    "LlamaCppModel",
    "ENTRY",
    "load_llamacpp",
    "llamacpp_greedy",
    "convert_gguf",
    "embedding_table",
    "resolve_gguf",
    "GGUF_TYPES",
    "KV_TYPES",
    "DEFAULT_CONTEXT",
    "DEFAULT_MAX_ROWS",
    "_Batch",
]
