"""The compiled decode step of the static engine (`static`): one token for every slot of a
preallocated KV cache, with per-slot positions, through the model's own forward.

The step's input is always `inputs_embeds` of shape (b, 1, D), so token, mixture and
hidden-state inputs share one graph. The model runs with a `SlotCache` in place of a
transformers cache: each layer's `update` writes the new key and value of every slot at that
slot's position and returns the slot's columns up to the step's width; the 4D additive mask lets
each slot see its own columns only (a custom 4D mask passes through transformers' mask code
unchanged). Attention is `decode_attention`: grouped-query attention by reshaping the queries,
with no copy of the keys and values per query head (transformers' SDPA path repeats them
whenever a mask is given). The batch (b, a bucket) and the width are dynamic dimensions, so
rows joining and leaving, and the columns growing, reuse the compiled graph.
"""

from __future__ import annotations

import os
import threading
import time
import types
import warnings
import weakref
from typing import Any, Optional

import torch
from torch import Tensor

from ...errors import CapabilityError

ATTENTION = "selar_static"  # our attention function's name in transformers' AttentionInterface
_LOCK = threading.Lock()  # the model's attention setting is switched for the step's duration
# attention arguments that change the result, which `decode_attention` refuses
_CHANGES = ("softcap", "s_aux", "sliding_window", "head_mask", "output_attentions", "sinks")


def decode_attention(
    module: Any,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Optional[Tensor],
    scaling: Optional[float] = None,
    dropout: float = 0.0,
    **kw: Any,
) -> tuple[Tensor, None]:
    """Attention of one new query per row over (b, kv heads, w, d) keys and values with an additive
    (b, 1, 1, w) mask; other calls (several queries, no mask) go to transformers' SDPA function."""
    unknown = sorted(k for k in _CHANGES if kw.get(k) not in (None, False))
    if query.shape[2] != 1 or attention_mask is None or attention_mask.dtype == torch.bool:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kw)
    if unknown or dropout:  # soft-capping, attention sinks, windows: not this function's job
        raise NotImplementedError(f"the static decode attention does not take {', '.join(unknown) or 'dropout'}")
    b, heads, _, d = query.shape
    kv, w = key.shape[1], key.shape[2]
    scale = d**-0.5 if scaling is None else scaling
    q = query.reshape(b, kv, heads // kv, d)  # query head h reads kv head h // (heads // kv)
    scores = torch.matmul(q, key.transpose(-1, -2)) * scale + attention_mask[:, :, :, :w]
    probs = torch.softmax(scores.float(), dim=-1).to(value.dtype)
    out = torch.matmul(probs, value).reshape(b, heads, 1, d)
    return out.transpose(1, 2), None


def register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, decode_attention)


class SlotCache:
    """What the model's layers see as their cache during a step (see the module docstring):
    `keys` and `values` are (layers, slots, kv heads, columns, head dim)."""

    is_compileable = True

    def __init__(self, keys: Tensor, values: Tensor, pos: Tensor, width: int):
        self.keys, self.values, self.pos, self.width = keys, values, pos, width
        self.rows = torch.arange(pos.shape[0], device=pos.device)

    def update(self, key: Tensor, value: Tensor, layer_idx: int, cache_kwargs: Any = None) -> tuple[Tensor, Tensor]:
        # every index a tensor, on the whole buffer (no view of it): the compiler writes in place
        layer = torch.full_like(self.rows, layer_idx)
        self.keys[layer, self.rows, :, self.pos] = key[:, :, 0]
        self.values[layer, self.rows, :, self.pos] = value[:, :, 0]
        b = self.pos.shape[0]
        return self.keys[layer_idx, :b, :, : self.width], self.values[layer_idx, :b, :, : self.width]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.width

    def __len__(self) -> int:
        return int(self.keys.shape[0])


def _step(
    model: Any,
    embeds: Tensor,
    pos: Tensor,
    mask: Tensor,
    keys: Tensor,
    values: Tensor,
    keep_kw: Optional[str],
    hidden: bool,
) -> tuple[Tensor, Optional[Tensor]]:
    cache = SlotCache(keys, values, pos, mask.shape[-1])
    kw: dict[str, Any] = {keep_kw: 1} if keep_kw else {}
    out = model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=pos[:, None],
        past_key_values=cache,
        cache_position=pos[:1],
        use_cache=True,
        output_hidden_states=hidden,
        **kw,
    )
    return out.logits[:, -1, :].float(), (out.hidden_states[-1][:, -1, :] if hidden else None)


class Step:
    """The decode step of one model: compiled (`compile=True`) or as is, with the time spent
    compiling recorded apart (the calls during which a graph was compiled)."""

    def __init__(self, model: Any, compile: bool):
        import inspect

        register_attention()
        self.model, self.compiled, self.error = model, compile, ""
        self.mismatch = ""  # why the compiled step was dropped after giving wrong logits (see _verify)
        self.cuda = model.get_input_embeddings().weight.device.type == "cuda"
        params = inspect.signature(model.forward).parameters
        self.keep_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        fn = _step
        if compile:  # a code object of its own: dynamo's cache of compiled graphs is per model
            code = _step.__code__.replace(co_name=f"_step_{id(model):x}")
            fn = types.FunctionType(code, _step.__globals__, code.co_name)
            fn = torch.compile(fn, fullgraph=True, dynamic=False, mode="reduce-overhead" if self.cuda else None)
        self.fn = fn
        self.seen: set[tuple] = set()
        self.compile_seconds = 0.0  # time of the calls that compiled a graph
        self.graphs = 0  # graphs compiled (dynamo's count grew during the call)

    def __call__(
        self,
        embeds: Tensor,
        pos: Tensor,
        mask: Tensor,
        keys: Tensor,
        values: Tensor,
        hidden: bool,
        strict: bool = False,
    ) -> tuple[Tensor, Optional[Tensor]]:
        if self.compiled:
            b = embeds.shape[0]
            if b > 1:
                torch._dynamo.mark_dynamic(embeds, 0)
                torch._dynamo.mark_dynamic(pos, 0)
                torch._dynamo.mark_dynamic(mask, 0)
            torch._dynamo.mark_dynamic(mask, 3)
            for t in (keys, values):
                torch._dynamo.mark_dynamic(t, 1)
                torch._dynamo.mark_dynamic(t, 3)
        key = (embeds.shape[0] == 1, hidden, torch.is_inference_mode_enabled())
        cfg = self.model.config
        with _LOCK:
            old = cfg._attn_implementation
            cfg._attn_implementation = ATTENTION
            try:
                if self.cuda and self.compiled:
                    torch.compiler.cudagraph_mark_step_begin()
                graphs, t0 = _graphs(), time.perf_counter()
                if key in self.seen or not self.compiled:
                    out = self.fn(self.model, embeds, pos, mask, keys, values, self.keep_kw, hidden)
                else:
                    out = self._first(strict, embeds, pos, mask, keys, values, hidden)
                now = _graphs()
                fresh = key not in self.seen or now != graphs  # a graph compiled (or loaded from a cache)
                if self.compiled and now != graphs:
                    self.compile_seconds += time.perf_counter() - t0
                    self.graphs += now - graphs
                if self.compiled and fresh:
                    out = self._verify(out, embeds, pos, mask, keys, values, hidden)
                self.seen.add(key)
            finally:
                cfg._attn_implementation = old
        if self.cuda:  # CUDA graphs reuse their output memory at the next replay
            out = (out[0].clone(), None if out[1] is None else out[1].clone())
        return out

    def _first(self, strict: bool, *args: Any) -> tuple[Tensor, Optional[Tensor]]:
        """The first call of a kind of graph, which compiles it. A failed compilation raises
        CapabilityError when `strict`, else the step runs as is from then on (with a warning)."""
        embeds, pos, mask, keys, values, hidden = args
        try:
            return self.fn(self.model, embeds, pos, mask, keys, values, self.keep_kw, hidden)
        except Exception as e:  # dynamo, inductor and the C++ toolchain raise many kinds
            why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
            if strict:
                raise CapabilityError(f"compile=on: compiling the decode step failed ({why})") from e
            warnings.warn(f"selar: compiling the decode step failed ({why}); decoding without compiling", stacklevel=3)
            self.fn, self.compiled, self.error = _step, False, why
            return self.fn(self.model, embeds, pos, mask, keys, values, self.keep_kw, hidden)

    def _verify(self, out: tuple[Tensor, Optional[Tensor]], *args: Any) -> tuple[Tensor, Optional[Tensor]]:
        """The first result of a compiled graph against the step as is on the same inputs (which
        rewrites the same cache columns). Inductor's on-disk cache does not key on the CPU's
        instruction set, so a cache shared between machines (a network home, an image built
        elsewhere) can hand over code for another processor, seen emitting token 0 forever: when
        the two differ beyond the precision's tolerance, one warning names the cache and the step
        runs as is from then on (new sessions take the eager engine, see `model.make_engine`)."""
        embeds, pos, mask, keys, values, hidden = args
        if self.cuda:  # the graph's output memory is reused at its next replay
            out = (out[0].clone(), None if out[1] is None else out[1].clone())
        want = _step(self.model, embeds, pos, mask, keys, values, self.keep_kw, hidden)
        dtype = embeds.dtype
        if agree(want[0], out[0], dtype) and (want[1] is None or out[1] is None or agree(want[1], out[1], dtype)):
            return out
        gap = float((out[0].float() - want[0].float()).abs().nan_to_num(float("inf")).max())
        self.mismatch = (
            f"the compiled decode step gives other logits than the eager step on the same inputs (largest "
            f"difference {gap:.3g}, logits up to {float(want[0].abs().max()):.3g}), probably code compiled for "
            f"another CPU in torch inductor's on-disk cache {inductor_cache()}"
        )
        warnings.warn(
            f"selar: {self.mismatch}; decoding eagerly from now on (compile=on and auto alike); delete that "
            f"directory or set TORCHINDUCTOR_CACHE_DIR to one per machine",
            stacklevel=4,
        )
        self.fn, self.compiled = _step, False
        return want


def tolerance(dtype: torch.dtype) -> float:
    """How far two kernels' logits may differ, relative to the largest: float32 1e-3; bfloat16 and
    float16 kernels differ by a few of their epsilons (measured on SmolLM2 in bfloat16: 1.3 on
    logits up to 29), far below what a wrong mask, position or kernel gives."""
    return max(1e-3, 16 * torch.finfo(dtype).eps)


def agree(want: Tensor, got: Tensor, dtype: torch.dtype) -> bool:
    """`got` equals the reference `want` within `tolerance(dtype)` of want's largest entry."""
    tol = tolerance(dtype)
    return torch.allclose(got.float(), want.float(), rtol=tol, atol=tol * max(1.0, float(want.abs().max())))


def inductor_cache() -> str:
    """The directory of torch inductor's on-disk cache of compiled code."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        return cache_dir()
    except (ImportError, OSError):
        return os.environ.get("TORCHINDUCTOR_CACHE_DIR", "(torch inductor's default cache directory)")


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


_STEPS: weakref.WeakKeyDictionary[Any, dict[bool, Step]] = weakref.WeakKeyDictionary()


def step_of(model: Any, compile: bool) -> Step:
    """The model's step (one per model and kind, kept while the model lives)."""
    steps = _STEPS.setdefault(model, {})
    if compile not in steps:
        steps[compile] = Step(model, compile)
    return steps[compile]


def compiled(model: Any) -> Optional[Step]:
    """The model's compiled step, if one was made."""
    return _STEPS.get(model, {}).get(True)
