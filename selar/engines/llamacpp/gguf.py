"""GGUF files for the llama.cpp engine: finding one, its embedding table, its tokenizer, and
conversion with llama.cpp's own (de)quantiser."""

from __future__ import annotations

import ctypes
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ... import catalog
from ...errors import ConfigError, ModelLoadError
from ...sources import resolve


def lib() -> Any:
    """llama-cpp-python's low-level bindings, quiet (only errors are logged)."""
    try:
        import llama_cpp  # noqa: F401
        from llama_cpp import llama_cpp as bindings
    except ImportError:
        raise ModelLoadError("the llama.cpp engine needs llama-cpp-python: pip install 'selar[llamacpp]'") from None
    global _LOG_CB
    if _LOG_CB is None:  # llama.cpp logs every load to stderr; keep only errors (level 4)

        @bindings.llama_log_callback
        def cb(level, text, _user):  # pragma: no cover - C callback
            if level == 4 and text:
                os.write(2, text)

        _LOG_CB = cb
        bindings.llama_backend_init()
        bindings.llama_log_set(_LOG_CB, ctypes.c_void_p(0))
    return bindings


_LOG_CB: Any = None


def _table_path(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()} {st.st_size} {st.st_mtime_ns}".encode()).hexdigest()[:12]
    beside = gguf.parent / f".{gguf.name}.embd-{key}.npy"
    if os.access(gguf.parent, os.W_OK):
        return beside
    return catalog.cache_dir() / "embeddings" / f"{gguf.stem}-{key}.npy"


def embedding_table(gguf: Path) -> np.ndarray:
    """(V, D) float32 rows of token_embd.weight, dequantised once and memory-mapped."""
    path = _table_path(gguf)
    if not path.is_file():
        from gguf import GGUFReader
        from gguf.quants import dequantize

        reader = GGUFReader(str(gguf))
        t = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
        if t is None:
            raise ModelLoadError(f"{gguf.name} has no token_embd.weight tensor")
        table = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        n_embd, n_vocab = (int(x) for x in t.shape[:2])  # GGUF lists dimensions innermost first
        table = table.reshape(n_vocab, n_embd)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.save(f, table)
        os.replace(tmp, path)  # never a half-written table
    return np.load(path, mmap_mode="r")


def resolve_gguf(name_or_path: str) -> tuple[Path, str]:
    """(GGUF file, source kind) of a catalog model, a GGUF file or a folder holding one."""
    src = resolve(name_or_path)
    if src.kind == "catalog":
        return catalog.gguf_file(name_or_path), "catalog"
    if src.kind == "gguf" and src.path is not None:
        return src.path, "gguf"
    if src.kind == "folder" and src.path is not None and src.loader is None:
        ggufs = sorted(src.path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0], "gguf"
        raise ModelLoadError(f"the llama.cpp engine needs a GGUF file; {src.path} holds {len(ggufs)} .gguf files")
    raise ModelLoadError(
        f"the llama.cpp engine runs a catalog model ({', '.join(catalog.CATALOG)}) or a GGUF "
        f"file; {name_or_path!r} is neither (hub ids and adapters need the transformers engine)"
    )


# How llama.cpp's graphs (src/models at llama-cpp-python 0.3.36) treat a batch of float input rows
# where it differs from a batch of token ids. The engine's rows must be what the token path
# feeds the first layer, so it applies token-only transforms itself and refuses float rows
# where they cannot be reproduced. Transforms applied on both paths need nothing: Gemma 1/2's
# sqrt(n_embd), Granite's `embedding_scale` (in build_inp_embd), MiniCPM3's scale_embd, AFMoE's
# sqrt(n_embd), RWKV's and others' embedding norms. MTP/next-n heads (Qwen3-Next, GLM, DeepSeek)
# also branch on token ids, but only in speculative heads, which this engine does not run.
TOKEN_ONLY_SQRT_SCALE = {"gemma3", "gemma-embedding"}  # token rows scaled by sqrt(n_embd); float rows not
FLOAT_ROWS_REFUSED = {
    "gemma3n": "its per-layer token embeddings are looked up by token id (float rows get the padding token's)",
    "gemma4": "its per-layer token embeddings are looked up by token id (float rows get the padding token's)",
    "qwen4exp": "its per-layer token embeddings are looked up by token id",
    "cogvlm": "it runs float rows through its vision expert's weights, token ids through its text weights",
    "qwen3vl": "it takes float rows as image features with deepstack channels",
    "qwen3vlmoe": "it takes float rows as image features with deepstack channels",
}


def meta(ll: Any, lm: Any, key: str) -> str | None:
    """A GGUF metadata value of a loaded llama.cpp model, as text (None when absent)."""
    buf = ctypes.create_string_buffer(256)
    n = ll.llama_model_meta_val_str(lm, key.encode(), buf, len(buf))
    return buf.value.decode(errors="replace") if n >= 0 else None


def float_row_scale(ll: Any, lm: Any, n_embd: int) -> tuple[str, float, str | None]:
    """(architecture, factor the engine applies to float rows so they equal the token path's
    rows, reason llama.cpp cannot take float rows for this architecture or None)."""
    arch = meta(ll, lm, "general.architecture") or "unknown"
    if arch in FLOAT_ROWS_REFUSED:
        return arch, 1.0, FLOAT_ROWS_REFUSED[arch]
    if meta(ll, lm, f"{arch}.deepstack_mapping") is not None or meta(ll, lm, f"{arch}.n_deepstack_layers") not in (
        None,
        "0",
    ):
        return arch, 1.0, "it takes float rows as image features with deepstack channels"
    if arch in TOKEN_ONLY_SQRT_SCALE:
        return arch, float(np.sqrt(np.float32(n_embd))), None
    return arch, 1.0, None


GGUF_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # llama_ftype of convert_gguf's output


def convert_gguf(src, dst, to: str = "f32") -> Path:
    """Write `src` (a GGUF file or catalog model) to `dst` with every weight matrix in `to`,
    using llama.cpp's own (de)quantiser. `f32` holds the quantised weights' exact values in
    float32: llama.cpp then computes in float32 throughout (with `kv_type="f32"`), which separates
    what the engine does from what quantised arithmetic does (see `selar.analysis.agreement`).
    Returns `dst` (written under a temporary name, then renamed)."""
    if to not in GGUF_TYPES:
        raise ConfigError(f"convert_gguf: `to` must be one of {', '.join(GGUF_TYPES)} (got {to!r})")
    src_path, _ = resolve_gguf(str(src))
    dst = Path(dst)
    ll = lib()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    p = ll.llama_model_quantize_default_params()
    p.ftype, p.allow_requantize, p.nthread = GGUF_TYPES[to], True, os.cpu_count() or 1
    try:
        if ll.llama_model_quantize(str(src_path).encode(), str(tmp).encode(), ctypes.byref(p)) != 0:
            raise ModelLoadError(f"llama.cpp could not convert {src_path.name} to {to}")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def tokenizer(gguf: Path, name: str) -> Any:
    """The transformers tokenizer of a GGUF model (the catalog's own folder when pulled)."""
    from transformers import AutoTokenizer

    if name in catalog.CATALOG and catalog.is_pulled(catalog.CATALOG[name]):
        return AutoTokenizer.from_pretrained(str(catalog.model_dir(catalog.CATALOG[name])))
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
