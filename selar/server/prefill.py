"""Chunked prefill: a long prompt is prefilled a chunk at a time, between the decode steps of the
rows already running, so a short request is not held for the whole prefill of a long one.

The engine contract (`selar.engines.base.Engine`) prefills new rows in one call (`add`). An
engine that can do better offers one optional method:

    prefill_chunks(prompts, chunk) -> Iterator[Optional[Tensor]]

Each `next()` prefills the next `chunk` tokens of the new rows into their own cache, leaving the
running batch alone (so `step` and `select` may run between two calls) and yields None; the last
`next()` joins the rows to the batch and yields their last logits, exactly as `add` would have
returned them. `chunks_for(engine)` finds it. The static-cache engine (compiled decoding) has its
own (`StaticEngine.prefill_chunks`); the eager transformers engine does not have it yet, so it is
provided here for that engine (`transformers_chunks`, using the engine's own forward and join; it
belongs in the engine package as `TransformersEngine.prefill_chunks`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Optional

import torch
from torch import Tensor

Chunks = Callable[[list[list[int]], int], Generator[Optional[Tensor], None, None]]


def chunks_for(engine: Any) -> Optional[Chunks]:
    """The engine's chunked prefill, or None when it prefills only in one call."""
    own = getattr(engine, "prefill_chunks", None)
    if own is not None:
        return own
    try:
        from ..engines.transformers import TransformersEngine
    except ImportError:  # pragma: no cover - transformers is a core dependency
        return None
    # the eager engine's row layout only (not a subclass that keeps its rows otherwise, e.g. static slots)
    same = all(getattr(type(engine), m, None) is getattr(TransformersEngine, m) for m in ("add", "_join", "select"))
    if isinstance(engine, TransformersEngine) and same and _plain_cache(engine):
        return lambda prompts, chunk: transformers_chunks(engine, prompts, chunk)
    return None


def _plain_cache(engine: Any) -> bool:
    """Chunks are exact for caches that keep every column (DynamicLayer); not tried on others."""
    from transformers.cache_utils import Cache, DynamicLayer

    from ..engines.transformers import cache as caches

    probe = caches.new_cache(engine.model, 1)
    return isinstance(probe, Cache) and all(type(layer) is DynamicLayer for layer in getattr(probe, "layers", ()))


@torch.no_grad()
def transformers_chunks(eng: Any, prompts: list[list[int]], chunk: int) -> Generator[Optional[Tensor], None, None]:
    """`prefill_chunks` for the transformers engine (see the module doc): the rows are prefilled
    into a cache of their own, with the engine's state put back after each chunk."""
    from ..engines.transformers import cache as caches

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), eng.pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(eng.device), mask.to(eng.device)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    cache, hidden, logits = caches.new_cache(eng.model, len(prompts)), None, torch.empty(0)
    for start in range(0, width, chunk):
        end = min(start + chunk, width)
        saved = (eng.cache, eng.mask, eng.next_pos, eng.hidden)
        try:
            eng.cache, eng.mask = cache, mask[:, :end]
            logits = eng._forward(eng.embed(ids[:, start:end]), pos[:, start:end])
            cache, hidden = eng.cache, eng.hidden
        finally:
            eng.cache, eng.mask, eng.next_pos, eng.hidden = saved
        if end < width:
            yield None
    # join the running rows, as TransformersEngine.add does after its forward
    old, old_hidden = (eng.cache, eng.mask, eng.next_pos), eng.hidden
    eng.cache, eng.mask, eng.next_pos, eng.hidden = cache, mask, pos[:, -1] + 1, hidden
    if old[0] is not None:
        eng._join(*old)
        if eng.keep_hidden:
            eng.hidden = torch.cat([old_hidden, eng.hidden])
    yield logits


class Prefilled:
    """Stands in for a session's engine while `DecodeSession.add` takes rows whose prefill ran in
    chunks: its `add` runs the last chunk (which joins the rows) and returns their logits."""

    def __init__(self, chunks: Generator[Optional[Tensor], None, None]):
        self.chunks = chunks

    def add(self, prompts: list[list[int]]) -> Tensor:
        logits = next(self.chunks)
        if logits is None:
            raise RuntimeError("chunked prefill: the last chunk yielded no logits")
        return logits
