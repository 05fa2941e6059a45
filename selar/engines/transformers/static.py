"""The static engine: the transformers engine's rows in a preallocated KV cache, decoded by one
compiled step (`slots`), as gpt-fast does, so each step costs what the hardware needs rather than
Python and dispatch time.

- The cache holds `slots` rows of `length` columns per layer; row r of the session lives in slot
  `slots[r]` with its prompt at columns 0.. and its next token at column `pos`. It grows (more
  slots, more columns) when rows need it; the compiled step has both as dynamic dimensions.
- A step runs the lowest `bucket` slots (1, 2, 4, 8, ...) that hold every row; slots of rows that
  left are refilled by rows that join, and rows move down when the bucket can shrink, so rows join
  and leave without recompiling.
- Prefill runs outside the compiled step: the new rows as a left-padded batch through the model's
  own forward and cache, exactly as the eager engine does, then moved into their slots; in one
  call (`add`) or a chunk of columns at a time between steps (`prefill_chunks`, for the server).

`support(model)` says whether a family can run here: full-attention layers in a standard
transformers cache, and a probe that the static step gives the eager engine's logits (sliding
windows, linear attention and recurrent state are not served: the eager engine runs them).
"""

from __future__ import annotations

import weakref
from collections.abc import Generator
from typing import Any, Optional

import torch
from torch import Tensor

from ...methods.base import Mixture
from . import cache as caches
from .engine import TransformersEngine
from .slots import Step, agree, step_of

WIDTH_STEP = 128  # the step attends to a multiple of this many columns (fewer shapes for CUDA graphs)
MIN_LENGTH = 512  # columns allocated at first (more as rows need them)


def bucket(n: int, least: int = 1) -> int:
    """The number of slots a step runs for n rows: a power of two, at least `least`."""
    return max(least, 1 << max(0, n - 1).bit_length())


class StaticEngine(TransformersEngine):
    """The transformers engine's contract (add/step/select/reset) over a static cache."""

    def __init__(self, model: Any, pad_id: int = 0, *, compile: bool = True, strict: bool = False):
        super().__init__(model, pad_id=pad_id)
        self.step_fn: Step = step_of(model, compile)
        self.strict = strict  # a failed compilation raises (else the step runs as is, with a warning)
        self.keys: Optional[Tensor] = None  # (layers, slots, kv heads, columns, head dim)
        self.values: Optional[Tensor] = None
        self.slots: list[int] = []  # the slot of each row, in the session's row order
        self.pos: Optional[Tensor] = None  # (S,) next column of each slot
        self.high = 0  # an upper bound of every row's next column (host side, no sync per step)
        self.slot_hidden: Optional[Tensor] = None  # (S, D) last hidden state of each slot, when kept
        # the compiler specialises a batch of 1: a session of one row runs that graph (the fastest
        # at batch 1); once it has held several rows it runs buckets of at least 2 (one graph for all)
        self.least = 1

    # -- the cache ----------------------------------------------------------------------------
    def _allocate(self, like: tuple[Tensor, Tensor], layers: int, slots: int, length: int) -> None:
        """Buffers for `slots` slots of `length` columns, shaped as `like`'s (rows, heads, columns,
        dim) keys and values; the rows held so far are copied over."""
        old_k, old_v = self.keys, self.values
        if old_k is None and self._reuse(like, layers, slots, length):
            return
        s0, l0 = (old_k.shape[1], old_k.shape[3]) if old_k is not None else (0, 0)
        slots, length = max(slots, s0), max(length, l0)
        k, v = (x.new_zeros(layers, slots, x.shape[1], length, x.shape[3]) for x in like)
        if old_k is not None and old_v is not None:
            k[:, :s0, :, :l0] = old_k
            v[:, :s0, :, :l0] = old_v
        if k.device.type == "cuda":  # fixed addresses for CUDA graphs
            torch._dynamo.mark_static_address(k)
            torch._dynamo.mark_static_address(v)
        self.keys, self.values = k, v
        pos = torch.zeros(slots, dtype=torch.long, device=self.device)
        if self.pos is not None:
            pos[: self.pos.shape[0]] = self.pos
        self.pos = pos
        if self.slot_hidden is not None:
            h = self.slot_hidden.new_zeros(slots, self.slot_hidden.shape[1])
            h[: self.slot_hidden.shape[0]] = self.slot_hidden
            self.slot_hidden = h

    def _reuse(self, like: tuple[Tensor, Tensor], layers: int, slots: int, length: int) -> bool:
        """Take the model's pooled buffers (a finished session's) when they are large enough: no
        allocation per batch, and the same addresses for CUDA graphs."""
        pooled = _POOL.pop(self.model, None)
        if pooled is None:
            return False
        if not all(
            (c.shape[0], c.shape[2], c.shape[4], c.dtype) == (layers, x.shape[1], x.shape[3], x.dtype)
            and c.shape[1] >= slots
            and c.shape[3] >= length
            for c, x in zip(pooled, like)
        ):
            return False
        self.keys, self.values = pooled
        self.pos = torch.zeros(pooled[0].shape[1], dtype=torch.long, device=self.device)
        return True

    def _fit(self, slots: int, columns: int, like: tuple[Tensor, Tensor], layers: int) -> None:
        """Room for slots 0..slots-1 and for `columns` columns (grows by doubling). The buffers keep
        one slot and WIDTH_STEP columns beyond any step's bucket and width: a size that equalled
        the buffer's would be specialised by the compiler (and recompiled when it no longer does)."""
        have_s = self.keys.shape[1] - 1 if self.keys is not None else 0
        have_l = self.keys.shape[3] - WIDTH_STEP if self.keys is not None else 0
        columns = -(-columns // WIDTH_STEP) * WIDTH_STEP
        if self.keys is not None and slots <= have_s and columns <= have_l:
            return
        if self.keys is None:
            new_s, new_l = bucket(slots), max(MIN_LENGTH, columns)
        else:
            new_s = have_s if slots <= have_s else max(2 * have_s, bucket(slots))
            new_l = have_l if columns <= have_l else max(2 * have_l, columns)
        self._allocate(like, layers, new_s + 1, -(-new_l // WIDTH_STEP) * WIDTH_STEP + WIDTH_STEP)

    # -- rows -----------------------------------------------------------------------------------
    @torch.no_grad()
    def add(self, prompts: list[list[int]]) -> Tensor:
        """Prefill new rows (a left-padded batch through the model's own cache) and move them
        into free slots; their last logits."""
        ids, mask, pos, lens = self._batch(prompts)
        logits, cache, hidden = self._prefill(ids, mask, pos)
        self._place(cache, hidden, lens)
        return logits

    @torch.no_grad()
    def prefill_chunks(self, prompts: list[list[int]], chunk: int) -> Generator[Optional[Tensor], None, None]:
        """Chunked prefill (the server's optional engine method, see `selar.server.prefill`): each
        next() prefills the next `chunk` columns of the new rows into a cache of their own, leaving
        the slots alone (steps and selects may run between two calls), and yields None; the last
        one moves the rows into free slots and yields their last logits, as `add` returns them."""
        ids, mask, pos, lens = self._batch(prompts)
        cache, width = caches.new_cache(self.model, ids.shape[0]), ids.shape[1]
        for start in range(0, width, chunk):
            end = min(start + chunk, width)
            logits, cache, hidden = self._prefill(ids[:, start:end], mask[:, :end], pos[:, start:end], cache)
            if end < width:
                yield None
        self._place(cache, hidden, lens)
        yield logits

    def _batch(self, prompts: list[list[int]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The new rows left-padded, on the device: ids, mask, positions, lengths."""
        n, width = len(prompts), max(len(p) for p in prompts)
        lens = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = (torch.arange(width)[None] >= (width - lens)[:, None]).long()
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        ids, mask, lens = ids.to(self.device), mask.to(self.device), lens.to(self.device)
        return ids, mask, (mask.cumsum(-1) - 1).clamp_min(0), lens

    def _place(self, cache: Any, hidden: Optional[Tensor], lens: Tensor) -> None:
        """Move prefilled rows (`cache`, left-padded to one width) into free slots."""
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        if any(k.shape[1:] != layers[0][0].shape[1:] or v.shape[1:] != layers[0][1].shape[1:] for k, v in layers):
            raise NotImplementedError("layers whose keys or values differ in shape")
        n, width = lens.shape[0], layers[0][0].shape[2]
        new = self._take(n)
        if len(self.slots) + n > 1:
            self.least = 2
        self._fit(self.bucket(max(self.slots + new) + 1), max(self.high, width) + 1, layers[0], len(layers))
        assert self.keys is not None and self.values is not None and self.pos is not None
        # slot column j of row i is prefill column j + (width - len_i), for j < width
        src = (torch.arange(width, device=self.device)[None] + (width - lens)[:, None]).clamp_max(width - 1)
        dst = torch.tensor(new, dtype=torch.long, device=self.device)
        for i, (k, v) in enumerate(layers):
            self.keys[i, dst, :, :width] = k.gather(2, src[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3]))
            self.values[i, dst, :, :width] = v.gather(2, src[:, None, :, None].expand(-1, v.shape[1], -1, v.shape[3]))
        self.pos[dst] = lens
        if hidden is not None:
            if self.slot_hidden is None:
                self.slot_hidden = hidden.new_zeros(self.pos.shape[0], hidden.shape[1])
            self.slot_hidden[dst] = hidden
        self.slots += new
        self.high = max(self.high, width)
        self._sync_hidden()

    def _prefill(
        self, ids: Tensor, mask: Tensor, pos: Tensor, cache: Any = None
    ) -> tuple[Tensor, Any, Optional[Tensor]]:
        """The eager engine's prefill: the same forward on the same left-padded batch, or on its
        columns from `cache`'s length on (`mask` covers every column up to these)."""
        cache = caches.new_cache(self.model, ids.shape[0]) if cache is None else cache
        kw: dict[str, Any] = {self.step_fn.keep_kw: 1} if self.step_fn.keep_kw else {}
        if getattr(self, "_cache_position", False):
            kw["cache_position"] = torch.arange(mask.shape[1] - ids.shape[1], mask.shape[1], device=self.device)
        out = self.model(
            inputs_embeds=self.embed(ids),
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            output_hidden_states=self.keep_hidden,
            **kw,
        )
        logits = out.logits[:, -1, :].float()
        if self.vocab_size is None:
            self.vocab_size = logits.shape[-1]
        hidden = out.hidden_states[-1][:, -1, :] if self.keep_hidden else None
        return logits, out.past_key_values, hidden

    def bucket(self, n: int) -> int:
        return bucket(n, self.least)

    def _take(self, n: int) -> list[int]:
        """n free slots, lowest first."""
        top = max(self.slots, default=-1) + 1
        free = sorted(set(range(top)) - set(self.slots))[:n]
        return free + list(range(top, top + n - len(free)))

    def _sync_hidden(self) -> None:
        if self.slot_hidden is not None and self.keep_hidden:
            self.hidden = self.slot_hidden[self._slot_index()]

    def _slot_index(self) -> Tensor:
        return torch.tensor(self.slots, dtype=torch.long, device=self.device)

    def reset(self) -> None:
        """Drop every row; the cache goes to the model's pool, for the next batch or session."""
        if self.keys is not None and self.values is not None:
            pooled = _POOL.get(self.model)
            if pooled is None or pooled[0].numel() <= self.keys.numel():
                _POOL[self.model] = (self.keys, self.values)
        self.keys = self.values = self.pos = self.slot_hidden = None
        self.slots, self.high, self.hidden = [], 0, None

    def select(self, keep: Tensor) -> None:
        """Keep these rows; the others' slots are free. Rows move down when the bucket can shrink."""
        kept = keep.tolist()
        gone = [self.slots[i] for i in sorted(set(range(len(self.slots))) - set(kept))]
        self.slots = [self.slots[i] for i in kept]
        assert self.pos is not None
        if gone:  # a free slot inside the bucket writes its column 0 until a row takes it
            self.pos[torch.tensor(gone, device=self.device)] = 0
        if self.slots and self.bucket(len(self.slots)) < self.bucket(max(self.slots) + 1):
            self._compact()
        if self.slots:
            self.high = int(self.pos[self._slot_index()].max())
        self._sync_hidden()

    def _compact(self) -> None:
        """Move the rows of the highest slots into the lowest free ones."""
        target = self.bucket(len(self.slots))
        movers = [r for r, s in enumerate(self.slots) if s >= target]
        holes = sorted(s for s in set(range(target)) - set(self.slots))[: len(movers)]
        src = torch.tensor([self.slots[r] for r in movers], device=self.device)
        dst = torch.tensor(holes, device=self.device)
        assert self.keys is not None and self.values is not None and self.pos is not None
        cols = min(self.high + 1, self.keys.shape[3])
        self.keys[:, dst, :, :cols] = self.keys[:, src, :, :cols]
        self.values[:, dst, :, :cols] = self.values[:, src, :, :cols]
        self.pos[dst] = self.pos[src]
        if self.slot_hidden is not None:
            self.slot_hidden[dst] = self.slot_hidden[src]
        for r, s in zip(movers, holes):
            self.slots[r] = s

    # -- the step -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, inputs: Mixture) -> Tensor:
        embeds = self.embed_mixture(inputs)
        if inputs.latent is not None and self.hidden is not None:  # hidden-state inputs
            heads = getattr(self.model, "selar_latent", None)
            h = self.hidden if heads is None else heads.project(self.hidden)
            embeds = torch.where(inputs.latent[:, None, None], h[:, None, :].to(embeds.dtype), embeds)
        assert self.keys is not None and self.values is not None
        b = self.bucket(max(self.slots) + 1)
        self._fit(b, self.high + 1, (self.keys[0], self.values[0]), self.keys.shape[0])
        assert self.pos is not None
        dense = self.slots == list(range(b))
        idx = None if dense else self._slot_index()
        if not dense:
            full = embeds.new_zeros(b, 1, embeds.shape[2])
            full[idx] = embeds
            embeds = full
        pos = self.pos[:b]
        width = -(-(self.high + 1) // WIDTH_STEP) * WIDTH_STEP
        cols = torch.arange(width, device=self.device)
        mask = torch.where(cols[None] <= pos[:, None], 0.0, torch.finfo(self.dtype).min).to(self.dtype)
        logits, hidden = self.step_fn(
            embeds, pos.clone(), mask[:, None, None, :], self.keys, self.values, self.keep_hidden, self.strict
        )
        if idx is None:
            self.pos[:b] += 1
        else:
            self.pos[idx] += 1
        self.high += 1
        if idx is not None:
            logits = logits[idx]
            hidden = None if hidden is None else hidden[idx]
        if hidden is not None:
            if self.slot_hidden is None:
                self.slot_hidden = hidden.new_zeros(self.pos.shape[0], hidden.shape[1])
            self.slot_hidden[self._slot_index()] = hidden
            self.hidden = hidden
        if self.vocab_size is None:
            self.vocab_size = logits.shape[-1]
        return logits


_POOL: weakref.WeakKeyDictionary[Any, tuple[Tensor, Tensor]] = weakref.WeakKeyDictionary()
_VERDICTS: weakref.WeakKeyDictionary[Any, Optional[str]] = weakref.WeakKeyDictionary()


def support(model: Any) -> Optional[str]:
    """None when the static engine can run this model, else why not (one clause). Checked once
    per model: the cache kind, then a probe of the static step against the eager engine."""
    if model not in _VERDICTS:
        _VERDICTS[model] = _check(model)
    return _VERDICTS[model]


def _check(model: Any) -> Optional[str]:
    from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

    from .family import family_name, fit

    fit(model)  # raises CapabilityError for a family the eager engine cannot drive either
    family = family_name(model)
    cache = caches.new_cache(model, 1)
    if not isinstance(cache, DynamicCache):
        return f"the {family} family keeps recurrent state (linear attention or Mamba layers) beside its KV cache"
    kinds = {type(layer) for layer in cache.layers if type(layer) is not DynamicLayer}
    if any(issubclass(k, DynamicSlidingWindowLayer) for k in kinds):
        return f"the {family} family has sliding-window attention layers"
    if kinds:
        return f"the {family} family has {', '.join(sorted(k.__name__ for k in kinds))} cache layers"
    try:
        ok = _probe(model)
    except (TypeError, ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError, IndexError) as e:
        return f"the static step of the {family} family failed ({type(e).__name__}: {str(e).strip()[:160]})"
    return None if ok else f"the static step of the {family} family does not give the eager engine's logits"


@torch.no_grad()
def _probe(model: Any) -> bool:
    """Two rows of different lengths, a third joining later, one leaving: the static step
    (not compiled) against the eager engine, logits compared at every step."""
    n = int(model.get_input_embeddings().weight.shape[0])
    prompts = [[(7 * i + 3) % n for i in range(k)] for k in (5, 3, 4)]
    eager, static = TransformersEngine(model), StaticEngine(model, compile=False)
    pairs = [(eager.add(prompts[:2]), static.add(prompts[:2]))]
    toks = torch.tensor([11 % n, 13 % n], device=static.device)
    for _ in range(2):
        mix = Mixture.of_tokens(toks)
        pairs.append((eager.step(mix), static.step(mix)))
    pairs.append((eager.add(prompts[2:]), static.add(prompts[2:])))
    keep = torch.tensor([0, 2], device=static.device)
    eager.select(keep)
    static.select(keep)
    mix = Mixture.of_tokens(torch.tensor([17 % n, 19 % n], device=static.device))
    pairs.append((eager.step(mix), static.step(mix)))
    dtype = model.get_input_embeddings().weight.dtype
    return all(agree(a, b, dtype) for a, b in pairs)
