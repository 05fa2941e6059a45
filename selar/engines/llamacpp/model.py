"""Models on the llama.cpp engine: a GGUF model in one llama.cpp context, its sequences shared by
the engines (decode sessions) running on it."""

from __future__ import annotations

import inspect
import os
import time
import weakref
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ...config import env_json
from ...errors import CapacityError, ConfigError, ModelLoadError
from ..base import Model, get_engine
from . import gguf as gg
from .engine import LlamaCppEngine, float_rows

DEFAULT_MAX_ROWS = 16
DEFAULT_CONTEXT = 4096
KV_TYPES = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8}  # ggml type ids


def _free(lib: Any, handles: dict) -> None:  # pragma: no cover - runs at collection or exit
    """Free the llama.cpp context and model (a weakref.finalize callback, so it runs once)."""
    if handles.get("ctx"):
        lib.llama_free(handles["ctx"])
    if handles.get("model"):
        lib.llama_model_free(handles["model"])
    handles.clear()


class LlamaCppModel(Model):
    """A GGUF model loaded by llama.cpp, with a transformers tokenizer for chat templates."""

    engine = "llamacpp"

    def __init__(
        self,
        gguf: Path,
        tokenizer: Any,
        name: str,
        source: str,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        context: int = DEFAULT_CONTEXT,
        threads: int = 0,
        flash_attn: Optional[bool] = None,
        kv_type: str = "f16",
    ):
        self.capabilities = get_engine("llamacpp").capabilities
        lib = gg.lib()
        t0 = time.perf_counter()
        mp = lib.llama_model_default_params()
        mp.n_gpu_layers = 0 if not torch.cuda.is_available() else 999
        self.lib, self.gguf = lib, Path(gguf)
        self._handles: dict = {}
        self.lm = lib.llama_model_load_from_file(str(gguf).encode(), mp)
        if not self.lm:
            raise ModelLoadError(f"llama.cpp could not load {gguf} (not a GGUF model it supports?)")
        self._handles["model"] = self.lm
        self._finalizer = weakref.finalize(self, _free, lib, self._handles)
        self.vocab = lib.llama_model_get_vocab(self.lm)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.n_embd = int(lib.llama_model_n_embd(self.lm))
        self.max_rows, self.threads, self.flash_attn = max_rows, threads or (os.cpu_count() or 1), flash_attn
        self.kv_type = kv_type
        train_ctx = int(lib.llama_model_n_ctx_train(self.lm))
        self.context = min(context, train_ctx) if train_ctx > 0 else context
        self.table = gg.embedding_table(self.gguf)
        if self.table.shape != (self.n_vocab, self.n_embd):
            raise ModelLoadError(
                f"embedding table of {self.gguf.name} is {self.table.shape}, expected ({self.n_vocab}, {self.n_embd})"
            )
        eog = [t for t in range(self.n_vocab) if lib.llama_vocab_is_eog(self.vocab, t)]
        super().__init__(
            tokenizer,
            name=name,
            source=source,
            vocab_size=self.n_vocab,
            stop_ids=eog,
            max_positions=self.context,
            load_seconds=time.perf_counter() - t0,
        )
        self._ctx = None
        self._owners: dict[int, weakref.ref] = {}  # llama.cpp sequence -> the engine using it
        self.info["serve_notes"] = [
            f"llama.cpp holds {self.max_rows} sequences of {self.context} positions (KV cache allocated up front; "
            f"lower --max-batch, --max-prompt-tokens or --max-tokens to shrink it)"
        ]

    def close(self) -> None:
        """Free the llama.cpp context and model now (otherwise when the model is collected)."""
        self._finalizer()
        self._ctx = self.lm = None

    def alloc_seqs(self, engine: LlamaCppEngine, k: int) -> np.ndarray:
        """k free sequence ids for `engine`. Several engines (the server's sessions) share the one
        context; sequences of engines that were dropped without a reset are reclaimed here."""
        mem = self.lib.llama_get_memory(self.context_handle())
        free = []
        for s in range(self.max_rows):
            owner = self._owners.get(s)
            if owner is not None and owner() is None:
                self.lib.llama_memory_seq_rm(mem, s, -1, -1)
                del self._owners[s]
                owner = None
            if owner is None:
                free.append(s)
                if len(free) == k:
                    break
        if len(free) < k:
            raise CapacityError(
                f"the llama.cpp engine decodes at most {self.max_rows} rows together "
                f"(load the model with a larger max_rows)"
            )
        for s in free:
            self._owners[s] = weakref.ref(engine)
        return np.array(free, dtype=np.int32)

    def free_seqs(self, seqs: Any) -> None:
        mem = self.lib.llama_get_memory(self.context_handle())
        for s in seqs:
            self.lib.llama_memory_seq_rm(mem, int(s), -1, -1)
            self._owners.pop(int(s), None)

    def context_handle(self) -> Any:
        """One llama.cpp context per model, reused by every engine (sessions run one at a time
        on a model; the server's scheduler keeps one session per configuration group)."""
        if self._ctx is None:
            lib = self.lib
            cp = lib.llama_context_default_params()
            cp.n_seq_max = self.max_rows
            cp.n_ctx = self.context * self.max_rows
            cp.n_batch = max(512, self.max_rows)
            cp.n_ubatch = max(512, self.max_rows)
            cp.n_threads = cp.n_threads_batch = self.threads
            cp.kv_unified = False  # a KV stream per sequence: attention over its own cells only
            cp.flash_attn_type = -1 if self.flash_attn is None else int(bool(self.flash_attn))  # -1: auto
            cp.type_k = cp.type_v = KV_TYPES[self.kv_type]
            cp.no_perf = True
            self._ctx = lib.llama_init_from_model(self.lm, cp)
            if not self._ctx:
                raise ModelLoadError(
                    f"llama.cpp could not create a context of {self.max_rows} x {self.context} "
                    f"positions (out of memory? lower max_rows or context"
                    + ("; a q8_0 V cache needs flash_attn" if self.kv_type == "q8_0" else "")
                    + ")"
                )
            self._handles["ctx"] = self._ctx
        return self._ctx

    def make_engine(self) -> LlamaCppEngine:
        return LlamaCppEngine(self)

    def check_method(self, method: str) -> None:
        """Also refuse methods that feed float rows on architectures llama.cpp cannot feed them to."""
        super().check_method(method)
        from ...methods import get_method_spec

        spec = get_method_spec(method)
        if spec.inputs - {"token"}:
            float_rows(self).require(spec.display)


def load_llamacpp(
    name_or_path: str,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    context: int = DEFAULT_CONTEXT,
    threads: int = 0,
    flash_attn: Optional[bool] = None,
    kv_type: str = "f16",
) -> LlamaCppModel:
    """Load a catalog model or GGUF file on llama.cpp. `max_rows`: sequences decoded together
    (the largest batch); `context`: positions per sequence (prompt + generation; capped at the
    model's training context); `threads`: 0 for all cores; `flash_attn`: None lets llama.cpp
    decide; `kv_type`: the KV cache's element type (llama.cpp's default f16; f32 for the closest
    match to float32 engines; bf16; q8_0 to halve its memory, with flash attention)."""
    if max_rows < 1 or context < 16:
        raise ConfigError(f"max_rows must be >= 1 and context >= 16 (got {max_rows}, {context})")
    if kv_type not in KV_TYPES:
        raise ConfigError(f"kv_type must be one of {', '.join(KV_TYPES)} (got {kv_type!r})")
    gg.lib()
    t0 = time.perf_counter()
    path, source = gg.resolve_gguf(name_or_path)
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelLoadError(f"{path} is not a GGUF file (no GGUF magic)")
    try:
        tok = gg.tokenizer(path, name_or_path)
    except Exception as e:
        raise ModelLoadError(f"could not read the tokenizer of {path.name}: {e}") from e
    model = LlamaCppModel(
        path,
        tok,
        name=name_or_path,
        source=source,
        max_rows=max_rows,
        context=context,
        threads=threads,
        flash_attn=flash_attn,
        kv_type=kv_type,
    )
    model.load_seconds = time.perf_counter() - t0
    return model


class _Entry:
    """The llama.cpp engine's registry entry."""

    @staticmethod
    def load(
        name: str, *, dtype: Any = "auto", device: str = "auto", trust_remote_code: bool = False, **options: Any
    ) -> LlamaCppModel:
        if str(dtype).replace("torch.", "") not in ("auto", "None") or device not in ("auto", "cpu"):
            raise ConfigError(
                "dtype and device apply to the transformers engine; llama.cpp runs the GGUF's own "
                "quantisation on the CPU"
            )
        extra = env_json("SELAR_LLAMACPP_ARGS")  # e.g. '{"kv_type": "f32", "threads": 4}' for CLI runs
        known = set(inspect.signature(load_llamacpp).parameters) - {"name_or_path"}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ConfigError(
                f"SELAR_LLAMACPP_ARGS: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return load_llamacpp(name, **{**extra, **options})

    @staticmethod
    def sizing(rows: int, positions: int) -> dict:
        """llama.cpp allocates its KV cache up front: room for these rows and positions."""
        return {"max_rows": rows, "context": max(DEFAULT_CONTEXT, positions)}


ENTRY = _Entry()


def llamacpp_greedy(model: LlamaCppModel, prompt: list[int], n: int) -> list[int]:
    """llama.cpp's own greedy generation (its greedy sampler over its own logits), one sequence,
    independently of `engine.LlamaCppEngine`: the reference for tests. It clears the model's context,
    so no engine may be decoding on the model meanwhile."""
    lib = model.lib
    ctx = model.context_handle()
    lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
    model._owners.clear()
    smpl = lib.llama_sampler_init_greedy()
    try:
        step = int(lib.llama_n_batch(ctx))  # a decode call takes at most n_batch tokens
        for i in range(0, len(prompt) - 1, step):  # all but the last prompt token
            part = prompt[i : min(i + step, len(prompt) - 1)]
            arr = (lib.llama_token * len(part))(*part)
            if lib.llama_decode(ctx, lib.llama_batch_get_one(arr, len(part))) != 0:
                raise RuntimeError("llama_decode failed")
        last = (lib.llama_token * 1)(prompt[-1])
        batch = lib.llama_batch_get_one(last, 1)
        out: list[int] = []
        for _ in range(n):
            if lib.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            tok = lib.llama_sampler_sample(smpl, ctx, -1)
            out.append(int(tok))
            if lib.llama_vocab_is_eog(model.vocab, tok):
                break
            one = (lib.llama_token * 1)(tok)
            batch = lib.llama_batch_get_one(one, 1)
        return out
    finally:
        lib.llama_sampler_free(smpl)
        lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
        model._owners.clear()
