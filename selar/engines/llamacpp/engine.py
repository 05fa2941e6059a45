"""The llama.cpp engine: the methods of the core on a GGUF model, without dequantising it.

Each row of the batch is a llama.cpp sequence with its own positions (a context with
`n_seq_max` sequences and a KV stream per sequence). A step is one `llama_decode` call for the
whole batch: a batch of token ids when every row's input is a plain token, else a batch of
float input rows, the mixture `sum_j w_j E(v_j)` taken from the embedding table. llama.cpp has
no API to read that table, so `token_embd.weight` is dequantised once with the `gguf` package
and cached (memory-mapped `.npy`) beside the model, or in the selar cache when that folder is
read-only. Float rows are what llama.cpp's token path feeds its first layer for the same mixture:
some architectures transform token ids only (Gemma 3 scales by sqrt(n_embd)), so the engine
applies that factor itself (`gguf.float_row_scale`), checks once per model that a float row
E(t) gives the logits of token t (`FloatRows`), and refuses float rows otherwise. The
`llama_batch` structures are built over numpy arrays allocated once, so a step fills them with
a few vectorised writes, without per-row Python work.
"""

from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import numpy as np
import torch
from torch import Tensor

from ...errors import CapabilityError, CapacityError, PromptError
from ...methods.base import Mixture
from . import gguf as gg


class LoadedModel(Protocol):
    """What the engine needs of its model (`model.LlamaCppModel`): the loaded llama.cpp model, its
    context, and the sequences of that context it lends to engines."""

    lib: Any
    lm: Any
    n_vocab: int
    n_embd: int
    table: np.ndarray
    max_rows: int
    context: int

    def context_handle(self) -> Any: ...

    def alloc_seqs(self, engine: LlamaCppEngine, k: int) -> np.ndarray: ...

    def free_seqs(self, seqs: Any) -> None: ...


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
        self.b.token = (
            ctypes.cast(0, ctypes.POINTER(lib.llama_token))
            if n_embd
            else self.token.ctypes.data_as(ctypes.POINTER(lib.llama_token))
        )
        self.b.embd = (
            self.embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            if n_embd
            else ctypes.cast(0, ctypes.POINTER(ctypes.c_float))
        )
        self.b.pos = self.pos.ctypes.data_as(ctypes.POINTER(lib.llama_pos))
        self.b.n_seq_id = self.n_seq.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.b.seq_id = self.seq_ptrs
        self.b.logits = self.out.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))


@dataclass(frozen=True)
class FloatRows:
    arch: str
    scale: float = 1.0  # float rows = sum_j w_j E(v_j) * scale
    refusal: Optional[str] = None  # why llama.cpp cannot take float rows for this architecture

    def require(self, what: str) -> None:
        if self.refusal is not None:
            raise CapabilityError(
                f"{what} feeds float input rows, which llama.cpp cannot take for a {self.arch} "
                f"model: {self.refusal}; use the transformers engine"
            )


_FLOAT_ROWS: weakref.WeakKeyDictionary[Any, FloatRows] = weakref.WeakKeyDictionary()


def float_rows(model: LoadedModel) -> FloatRows:
    """How this model takes float input rows: the architecture's known transform (see
    `gguf.float_row_scale`), then checked once on the model itself: token t and the float row
    E(t) * scale, each alone at position 0, must give the same logits."""
    got = _FLOAT_ROWS.get(model)
    if got is None:
        arch, scale, refusal = gg.float_row_scale(model.lib, model.lm, model.n_embd)
        got = FloatRows(arch, scale, refusal)
        if refusal is None:
            eng = LlamaCppEngine(model, rows=got)
            t = min(model.n_vocab - 1, 100)
            try:
                seq = model.alloc_seqs(eng, 1)
            except CapacityError:
                return got  # every sequence busy: check on a later call
            try:
                a = eng._probe(seq, tokens=np.array([t], dtype=np.int32))
                b = eng._probe(seq, rows=(model.table[t] * scale)[None].astype(np.float32))
            finally:
                model.free_seqs(seq)
            if not np.allclose(a, b, rtol=0, atol=1e-3 * max(1.0, float(np.abs(a).max()))):
                got = FloatRows(
                    arch,
                    scale,
                    f"its graph treats a float row E(t) differently from token t (max |logit "
                    f"diff| {float(np.abs(a - b).max()):.3g})",
                )
        _FLOAT_ROWS[model] = got
    return got


class LlamaCppEngine:
    """The engine protocol (add/step/select/reset) over one llama.cpp context."""

    def __init__(self, model: LoadedModel, rows: Optional[FloatRows] = None):
        self.model, self.lib = model, model.lib
        self.ctx = model.context_handle()
        self.vocab_size = model.n_vocab
        self.table = model.table
        self.rows = rows if rows is not None else float_rows(model)
        cap = max(512, model.max_rows)
        self.tokens = _Batch(self.lib, cap)
        self.embeds = _Batch(self.lib, model.max_rows, model.n_embd)
        self.seq = np.zeros(0, dtype=np.int32)  # llama.cpp sequence of each row
        self.pos = np.zeros(0, dtype=np.int32)  # next position of each row

    # -- helpers ----------------------------------------------------------------------------
    def _decode(self, batch: _Batch, n: int, n_out: int) -> np.ndarray:
        batch.b.n_tokens = n
        rc = self.lib.llama_decode(self.ctx, batch.b)
        if rc == 1:
            raise CapacityError("llama_decode found no KV slot (the llama.cpp context is full)")
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc}): " + {2: "aborted"}.get(rc, "error"))
        ptr = self.lib.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.vocab_size))

    def _probe(
        self, seq: np.ndarray, tokens: Optional[np.ndarray] = None, rows: Optional[np.ndarray] = None
    ) -> np.ndarray:
        """Logits of one input (a token or a float row) alone at position 0 of sequence `seq`."""
        b = self.tokens if tokens is not None else self.embeds
        if tokens is not None:
            b.token[:1] = tokens
        else:
            b.embd[:1] = rows
        b.pos[:1], b.seq[:1], b.out[:1] = 0, seq, 1
        out = self._decode(b, 1, 1).copy()
        self.lib.llama_memory_seq_rm(self.lib.llama_get_memory(self.ctx), int(seq[0]), -1, -1)
        return out

    # -- protocol ---------------------------------------------------------------------------
    def add(self, prompts: list[list[int]]) -> Tensor:
        """Prefill new rows, each in a free sequence; their last logits."""
        for p in prompts:
            if len(p) >= self.model.context:
                raise PromptError(
                    f"a prompt has {len(p)} tokens; the llama.cpp context holds {self.model.context} per row"
                )
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
            raise CapabilityError("hidden-state inputs (adaptive-latent) need the transformers engine")
        if (self.pos >= self.model.context).any():
            raise CapacityError(f"a row reached the llama.cpp context of {self.model.context} positions")
        hard = inputs.ids is not None and (inputs.ids.shape[1] == 1 or not bool((inputs.weights[:, 1:] != 0).any()))
        if hard:
            b = self.tokens
            b.token[:n] = inputs.ids[:, 0].numpy()
        else:
            self.rows.require("a soft input")
            b = self.embeds
            b.embd[:n] = self._mix(inputs)
        b.pos[:n] = self.pos
        b.seq[:n] = self.seq
        b.out[:n] = 1
        logits = torch.from_numpy(self._decode(b, n, n).copy())
        self.pos += 1
        return logits

    def _mix(self, inputs: Mixture) -> np.ndarray:
        """sum_j w_j E(v_j), times the architecture's token-path factor (1 for most)."""
        w = inputs.weights.float().numpy()
        if inputs.dense:
            mix = w[:, : self.table.shape[0]] @ self.table
        else:
            rows = self.table[inputs.ids.numpy().reshape(-1)].reshape(*inputs.ids.shape, -1)
            mix = np.einsum("bm,bmd->bd", w, rows)
        return mix if self.rows.scale == 1.0 else mix * np.float32(self.rows.scale)

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
