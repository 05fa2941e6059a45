"""Row operations on a transformers cache for the engine's left-padded batch: a new cache for
new rows (as `generate` makes it), joining two batches (the shorter left-padded to one width),
keeping some rows and dropping leading columns that no kept row attends to.

Two kinds of cache are supported, through transformers' own structures:

- `Cache` (`DynamicCache(config=...)`) whose layers are `DynamicLayer` (all columns) or
  `DynamicSlidingWindowLayer` (the last `window - 1` columns of a `cumulative_length`-wide
  batch): the Llama/Qwen/Mistral/Gemma/Phi/Granite families, including sliding-window layers;
- hybrid caches (`key_cache`/`value_cache` lists beside per-row recurrent state lists,
  `conv_states` with `ssm_states` or `recurrent_states`): Qwen3-Next's linear attention and
  the Mamba-2 layers of Falcon-H1 and Granite 4; their state has no column axis, so it moves
  with its row only.

`check` refuses anything else (static, quantised or offloaded layers, unknown per-row data)
with a CapabilityError that names the family, before any row is decoded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...errors import CapabilityError

KV_LISTS = ("key_cache", "value_cache")
STATE_LISTS = ("conv_states", "ssm_states", "recurrent_states")


def new_cache(model: Any, rows: int) -> Any:
    """An empty cache for `rows` new rows, as `generate` makes it (None: the model makes its own
    in its forward, as Qwen3-Next does)."""
    from transformers import DynamicCache

    if type(model)._supports_default_dynamic_cache():
        return DynamicCache(config=model.config)
    ids = torch.zeros((rows, 1), dtype=torch.long, device=model.get_input_embeddings().weight.device)
    kw = model.prepare_inputs_for_generation(
        ids,
        past_key_values=None,
        attention_mask=torch.ones_like(ids),
        cache_position=torch.arange(1, device=ids.device),
        use_cache=True,
    )
    return kw.get("past_key_values")


def _items(container: Any) -> list:
    return list(container.items()) if isinstance(container, dict) else list(enumerate(container))


def check(cache: Any, family: str) -> None:
    """Raise CapabilityError unless the engine knows how to move this cache's rows."""
    from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer

    def refuse(why: str) -> None:
        raise CapabilityError(f"the transformers engine cannot batch the {family} family: {why}")

    if isinstance(cache, Cache):
        if getattr(cache, "offloading", False):
            refuse("its cache is offloaded")
        kinds = {type(layer) for layer in cache.layers} - {DynamicLayer, DynamicSlidingWindowLayer}
        if kinds:
            refuse(
                f"its cache has {', '.join(sorted(k.__name__ for k in kinds))} layers, whose rows the engine "
                f"cannot join or drop"
            )
        return
    if not all(hasattr(cache, a) for a in KV_LISTS) or not hasattr(cache, "conv_states"):
        refuse(
            f"its cache ({type(cache).__name__}) is neither a transformers Cache nor a hybrid attention and "
            f"recurrent-state cache"
        )
    unknown = sorted(k for k, v in vars(cache).items() if k not in KV_LISTS + STATE_LISTS and _has_tensors(v))
    if unknown:
        refuse(f"its cache ({type(cache).__name__}) holds per-row data the engine does not know: {', '.join(unknown)}")


def _has_tensors(v: Any) -> bool:
    if isinstance(v, Tensor):
        return v.dim() > 0
    if isinstance(v, (list, tuple, dict)):
        return any(isinstance(x, Tensor) for _, x in _items(v))
    return False


def lpad(x: Tensor, width: int, dim: int) -> Tensor:
    extra = width - x.shape[dim]
    if extra <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def join(old: Any, new: Any, width: int) -> Any:
    """`new` (a freshly prefilled cache) with `old`'s rows put first; both padded on the left to
    `width` columns. Returns the joined cache."""
    from transformers.cache_utils import Cache, DynamicSlidingWindowLayer

    if isinstance(new, Cache):
        pairs: list[tuple[Any, Any]] = list(zip(old.layers, new.layers))
        for a, b in pairs:
            keep = width
            if isinstance(b, DynamicSlidingWindowLayer):  # it holds the last window - 1 columns only
                keep = min(width, b.sliding_window - 1)
                b.cumulative_length = width
            b.keys = torch.cat([lpad(a.keys, keep, 2), lpad(b.keys, keep, 2)])
            b.values = torch.cat([lpad(a.values, keep, 2), lpad(b.values, keep, 2)])
        return new
    for name in KV_LISTS + STATE_LISTS:
        if not hasattr(new, name):
            continue
        dst, src = getattr(new, name), getattr(old, name)
        for i, y in _items(dst):
            x = src[i]
            if isinstance(y, Tensor) and isinstance(x, Tensor):
                if y.dim() == 4 and name in KV_LISTS:  # (rows, heads, columns, dim)
                    x, y = lpad(x, width, 2), lpad(y, width, 2)
                dst[i] = torch.cat([x, y])
    return new


def select(cache: Any, keep: Tensor, start: int) -> None:
    """Keep rows `keep` and drop the first `start` columns (padding in every kept row)."""
    from transformers.cache_utils import Cache

    if isinstance(cache, Cache):
        cache.batch_select_indices(keep)
        if start == 0:
            return
        layers: list[Any] = list(cache.layers)
        for layer in layers:
            if layer.is_sliding:  # a DynamicSlidingWindowLayer (check() refuses other kinds)
                layer.cumulative_length -= start
                n = min(layer.cumulative_length, layer.sliding_window - 1)
                layer.keys, layer.values = layer.keys[:, :, -n:], layer.values[:, :, -n:]
            else:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
        return
    for name in KV_LISTS + STATE_LISTS:  # every per-row tensor (check() refuses caches with others)
        if not hasattr(cache, name):
            continue
        lst = getattr(cache, name)
        for i, t in _items(lst):
            if isinstance(t, Tensor):
                t = t[keep]
                lst[i] = t[:, :, start:] if start and t.dim() == 4 and name in KV_LISTS else t
