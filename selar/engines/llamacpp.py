"""The llama.cpp engine: the methods of the core on a GGUF model, without dequantising it.

Each row of the batch is a llama.cpp sequence with its own positions (a context with
`n_seq_max` sequences and a KV stream per sequence). A step is one `llama_decode` call for the
whole batch: a batch of token ids when every row's input is a plain token, else a batch of
float input rows, the mixture `sum_j w_j E(v_j)` taken from the embedding table. llama.cpp has
no API to read that table, so `token_embd.weight` is dequantised once with the `gguf` package
and cached (memory-mapped `.npy`) beside the model, or in the selar cache when that folder is
read-only. The `llama_batch` structures are built over numpy arrays allocated once, so a step
fills them with a few vectorised writes, without per-row Python work.

    pip install selar[llamacpp]      # llama-cpp-python (builds llama.cpp; a few minutes)
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import time
import weakref
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, ModelLoadError
from ..methods.base import Mixture
from ..models import Model

DEFAULT_MAX_ROWS = 16
DEFAULT_CONTEXT = 4096


def _lib():
    try:
        import llama_cpp  # noqa: F401
        from llama_cpp import llama_cpp as lib
    except ImportError:
        raise ModelLoadError("the llama.cpp engine needs llama-cpp-python: pip install 'selar[llamacpp]'") from None
    return lib


# -- the embedding table ------------------------------------------------------------------------

def _table_path(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()} {st.st_size} {st.st_mtime_ns}".encode()).hexdigest()[:12]
    beside = gguf.parent / f".{gguf.name}.embd-{key}.npy"
    if os.access(gguf.parent, os.W_OK):
        return beside
    from ..catalog import cache_dir
    return cache_dir() / "embeddings" / f"{gguf.stem}-{key}.npy"


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


KV_TYPES = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8}  # ggml type ids

# -- model ------------------------------------------------------------------------------------

class LlamaCppModel(Model):
    """A GGUF model loaded by llama.cpp, with a transformers tokenizer for chat templates."""

    def __init__(self, gguf: Path, tokenizer, name: str, source: str, *, max_rows: int = DEFAULT_MAX_ROWS,
                 context: int = DEFAULT_CONTEXT, threads: int = 0, flash_attn: Optional[bool] = None,
                 kv_type: str = "f16"):
        lib = _lib()
        lib.llama_backend_init()
        self._quiet(lib)
        t0 = time.perf_counter()
        mp = lib.llama_model_default_params()
        mp.n_gpu_layers = 0 if not torch.cuda.is_available() else 999
        self.lib, self.gguf = lib, Path(gguf)
        self.lm = lib.llama_model_load_from_file(str(gguf).encode(), mp)
        if not self.lm:
            raise ModelLoadError(f"llama.cpp could not load {gguf} (not a GGUF model it supports?)")
        self.vocab = lib.llama_model_get_vocab(self.lm)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.n_embd = int(lib.llama_model_n_embd(self.lm))
        self.max_rows, self.threads, self.flash_attn = max_rows, threads or (os.cpu_count() or 1), flash_attn
        self.kv_type = kv_type
        train_ctx = int(lib.llama_model_n_ctx_train(self.lm))
        self.context = min(context, train_ctx) if train_ctx > 0 else context
        self.table = embedding_table(self.gguf)
        if self.table.shape != (self.n_vocab, self.n_embd):
            raise ModelLoadError(f"embedding table of {gguf.name} is {self.table.shape}, "
                                 f"expected ({self.n_vocab}, {self.n_embd})")
        super().__init__(None, tokenizer, name=name, source=source, engine="llamacpp")
        self.load_seconds = time.perf_counter() - t0
        self.vocab_size = self.n_vocab
        eog = [t for t in range(self.n_vocab) if lib.llama_vocab_is_eog(self.vocab, t)]
        self.stop_ids = sorted(eog)
        self.max_positions = self.context
        tok = tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (self.stop_ids or [0])[0]
        self._ctx = None
        self._owners: dict[int, weakref.ref] = {}  # llama.cpp sequence -> the engine using it

    def alloc_seqs(self, engine, k: int) -> np.ndarray:
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
            raise ConfigError(f"the llama.cpp engine decodes at most {self.max_rows} rows together "
                              f"(load the model with a larger max_rows)")
        for s in free:
            self._owners[s] = weakref.ref(engine)
        return np.array(free, dtype=np.int32)

    def free_seqs(self, seqs) -> None:
        mem = self.lib.llama_get_memory(self.context_handle())
        for s in seqs:
            self.lib.llama_memory_seq_rm(mem, int(s), -1, -1)
            self._owners.pop(int(s), None)

    @staticmethod
    def _quiet(lib) -> None:
        """llama.cpp logs every load to stderr; keep only errors (level 4)."""
        global _LOG_CB
        if _LOG_CB is None:
            @lib.llama_log_callback
            def cb(level, text, _user):  # pragma: no cover - C callback
                if level == 4 and text:
                    os.write(2, text)
            _LOG_CB = cb
            lib.llama_log_set(_LOG_CB, ctypes.c_void_p(0))

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # logits; the weights stay quantised

    def context_handle(self):
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
                raise ModelLoadError(f"llama.cpp could not create a context of {self.max_rows} x {self.context} "
                                     f"positions (out of memory? lower max_rows or context"
                                     + ("; a q8_0 V cache needs flash_attn" if self.kv_type == "q8_0" else "")
                                     + ")")
        return self._ctx

    def make_engine(self):
        return LlamaCppEngine(self)

    def __del__(self):  # pragma: no cover - interpreter shutdown order varies
        try:
            if self._ctx:
                self.lib.llama_free(self._ctx)
            if self.lm:
                self.lib.llama_model_free(self.lm)
        except Exception:
            pass


_LOG_CB = None


def resolve_gguf(name_or_path: str) -> tuple[Path, str]:
    from .. import catalog

    if name_or_path in catalog.CATALOG:
        return catalog.gguf_file(name_or_path), "catalog"
    path = Path(os.path.expanduser(name_or_path))
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path} is not a .gguf file; the llama.cpp engine runs GGUF files")
        return path, "gguf"
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0], "gguf"
        raise ModelLoadError(f"the llama.cpp engine needs a GGUF file; {path} holds {len(ggufs)} .gguf files")
    raise ModelLoadError(f"the llama.cpp engine runs a catalog model ({', '.join(catalog.CATALOG)}) or a GGUF "
                         f"file; {name_or_path!r} is neither (hub ids need the transformers engine)")


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
    lib = _lib()
    lib.llama_backend_init()
    LlamaCppModel._quiet(lib)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    p = lib.llama_model_quantize_default_params()
    p.ftype, p.allow_requantize, p.nthread = GGUF_TYPES[to], True, os.cpu_count() or 1
    try:
        if lib.llama_model_quantize(str(src_path).encode(), str(tmp).encode(), ctypes.byref(p)) != 0:
            raise ModelLoadError(f"llama.cpp could not convert {src_path.name} to {to}")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _tokenizer(gguf: Path, name: str):
    from transformers import AutoTokenizer

    from .. import catalog

    if name in catalog.CATALOG and catalog.is_pulled(catalog.CATALOG[name]):
        return AutoTokenizer.from_pretrained(str(catalog.model_dir(catalog.CATALOG[name])))
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def load_llamacpp(name_or_path: str, *, max_rows: int = DEFAULT_MAX_ROWS, context: int = DEFAULT_CONTEXT,
                  threads: int = 0, flash_attn: Optional[bool] = None, kv_type: str = "f16") -> LlamaCppModel:
    """Load a catalog model or GGUF file on llama.cpp. `max_rows`: sequences decoded together
    (the largest batch); `context`: positions per sequence (prompt + generation; capped at the
    model's training context); `threads`: 0 for all cores; `flash_attn`: None lets llama.cpp
    decide; `kv_type`: the KV cache's element type (llama.cpp's default f16; f32 for the closest
    match to float32 engines; bf16; q8_0 to halve its memory, with flash attention)."""
    if max_rows < 1 or context < 16:
        raise ConfigError(f"max_rows must be >= 1 and context >= 16 (got {max_rows}, {context})")
    if kv_type not in KV_TYPES:
        raise ConfigError(f"kv_type must be one of {', '.join(KV_TYPES)} (got {kv_type!r})")
    _lib()
    t0 = time.perf_counter()
    gguf, source = resolve_gguf(name_or_path)
    with open(gguf, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelLoadError(f"{gguf} is not a GGUF file (no GGUF magic)")
    try:
        tok = _tokenizer(gguf, name_or_path)
    except Exception as e:
        raise ModelLoadError(f"could not read the tokenizer of {gguf.name}: {e}") from e
    model = LlamaCppModel(gguf, tok, name=name_or_path, source=source, max_rows=max_rows, context=context,
                          threads=threads, flash_attn=flash_attn, kv_type=kv_type)
    model.load_seconds = time.perf_counter() - t0
    return model


# -- engine -----------------------------------------------------------------------------------

class _Batch:
    """A llama_batch over numpy arrays allocated once (no llama_batch_init/free)."""

    def __init__(self, lib, cap: int, n_embd: int = 0):
        self.cap = cap
        self.token = np.zeros(cap, dtype=np.int32)
        self.embd = np.zeros((cap, n_embd), dtype=np.float32) if n_embd else None
        self.pos = np.zeros(cap, dtype=np.int32)
        self.n_seq = np.ones(cap, dtype=np.int32)
        self.seq = np.zeros(cap, dtype=np.int32)
        self.out = np.zeros(cap, dtype=np.int8)
        ptr = ctypes.POINTER(lib.llama_seq_id)
        base = self.seq.ctypes.data
        self.seq_ptrs = (ptr * cap)(*[ctypes.cast(base + 4 * i, ptr) for i in range(cap)])
        self.b = lib.llama_batch()
        self.b.token = ctypes.cast(0, ctypes.POINTER(lib.llama_token)) if n_embd else \
            self.token.ctypes.data_as(ctypes.POINTER(lib.llama_token))
        self.b.embd = self.embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) if n_embd else \
            ctypes.cast(0, ctypes.POINTER(ctypes.c_float))
        self.b.pos = self.pos.ctypes.data_as(ctypes.POINTER(lib.llama_pos))
        self.b.n_seq_id = self.n_seq.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.b.seq_id = self.seq_ptrs
        self.b.logits = self.out.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))


class LlamaCppEngine:
    """The engine protocol (add/step/select/reset) over one llama.cpp context."""

    def __init__(self, model: LlamaCppModel):
        self.model, self.lib = model, model.lib
        self.ctx = model.context_handle()
        self.vocab_size = model.n_vocab
        self.table = model.table
        cap = max(512, model.max_rows)
        self.tokens = _Batch(self.lib, cap)
        self.embeds = _Batch(self.lib, model.max_rows, model.n_embd)
        self.seq = np.zeros(0, dtype=np.int32)  # llama.cpp sequence of each row
        self.pos = np.zeros(0, dtype=np.int32)  # next position of each row

    # -- helpers ----------------------------------------------------------------------------
    def _decode(self, batch: _Batch, n: int, n_out: int) -> np.ndarray:
        batch.b.n_tokens = n
        rc = self.lib.llama_decode(self.ctx, batch.b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc}): " + {1: "no KV slot (context full)", 2: "aborted"}
                               .get(rc, "error"))
        ptr = self.lib.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.vocab_size))

    # -- protocol ---------------------------------------------------------------------------
    def add(self, prompts: list[list[int]]) -> Tensor:
        """Prefill new rows, each in a free sequence; their last logits."""
        for p in prompts:
            if len(p) >= self.model.context:
                raise ConfigError(f"a prompt has {len(p)} tokens; the llama.cpp context holds {self.model.context} "
                                  f"per row")
        seqs = self.model.alloc_seqs(self, len(prompts))
        out = np.empty((len(prompts), self.vocab_size), dtype=np.float32)
        b, cap = self.tokens, self.tokens.cap
        # all prompt tokens, flat (row, position, token), in chunks of at most `cap` tokens; a long
        # prompt spans several chunks; logits only at each prompt's last token
        lens = np.array([len(p) for p in prompts])
        rows_all = np.repeat(np.arange(len(prompts)), lens)
        pos_all = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        tok_all = np.fromiter((t for p in prompts for t in p), dtype=np.int32, count=int(lens.sum()))
        last_all = pos_all == lens[rows_all] - 1
        for start in range(0, len(tok_all), cap):
            sl = slice(start, start + cap)
            rows, last = rows_all[sl], last_all[sl]
            n = len(rows)
            b.token[:n], b.pos[:n], b.seq[:n], b.out[:n] = tok_all[sl], pos_all[sl], seqs[rows], last
            out[rows[last]] = self._decode(b, n, int(last.sum()))
        self.seq = np.concatenate([self.seq, seqs])
        self.pos = np.concatenate([self.pos, lens.astype(np.int32)])
        return torch.from_numpy(out)

    def step(self, inputs: Mixture) -> Tensor:
        n = len(self.seq)
        if inputs.latent is not None and bool(inputs.latent.any()):
            raise ConfigError("hidden-state inputs (adaptive-latent) need the transformers engine")
        if (self.pos >= self.model.context).any():
            raise ConfigError(f"a row reached the llama.cpp context of {self.model.context} positions")
        hard = inputs.ids is not None and (inputs.ids.shape[1] == 1 or not bool((inputs.weights[:, 1:] != 0).any()))
        if hard:
            b = self.tokens
            b.token[:n] = inputs.ids[:, 0].numpy()
        else:
            b = self.embeds
            b.embd[:n] = self._mix(inputs)
        b.pos[:n] = self.pos
        b.seq[:n] = self.seq
        b.out[:n] = 1
        logits = torch.from_numpy(self._decode(b, n, n).copy())
        self.pos += 1
        return logits

    def _mix(self, inputs: Mixture) -> np.ndarray:
        w = inputs.weights.float().numpy()
        if inputs.dense:
            return w[:, : self.table.shape[0]] @ self.table
        rows = self.table[inputs.ids.numpy().reshape(-1)].reshape(*inputs.ids.shape, -1)
        return np.einsum("bm,bmd->bd", w, rows)

    def select(self, keep: Tensor) -> None:
        """Keep these rows; the sequences of the others are cleared and become free."""
        k = keep.numpy()
        gone = np.setdiff1d(np.arange(len(self.seq)), k)
        self.model.free_seqs(self.seq[gone])  # only rows that finished, on the steps they finish
        self.seq, self.pos = self.seq[k], self.pos[k]

    def reset(self) -> None:
        self.model.free_seqs(self.seq)
        self.seq = np.zeros(0, dtype=np.int32)
        self.pos = np.zeros(0, dtype=np.int32)


def llamacpp_greedy(model: LlamaCppModel, prompt: list[int], n: int) -> list[int]:
    """llama.cpp's own greedy generation (its greedy sampler over its own logits), one sequence,
    independently of the engine above: the reference for tests. It clears the model's context,
    so no engine may be decoding on the model meanwhile."""
    lib = model.lib
    ctx = model.context_handle()
    lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
    model._owners.clear()
    smpl = lib.llama_sampler_init_greedy()
    try:
        step = int(lib.llama_n_batch(ctx))  # a decode call takes at most n_batch tokens
        for i in range(0, len(prompt) - 1, step):  # all but the last prompt token
            part = prompt[i: min(i + step, len(prompt) - 1)]
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
