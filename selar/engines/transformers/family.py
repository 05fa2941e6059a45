"""What the engine must know of a model family before decoding, found once per model by a probe
of a few tokens rather than a list of family names:

- its cache: the engine can move its rows (`cache.check`), else the family is refused;
- its token path: the engine feeds every input as `inputs_embeds`, so a row of token v must be
  what the model's own `input_ids` path gives for v. Most families embed tokens with their
  input-embedding module (Gemma 3 scales inside that module; Gemma 1/2 and Granite scale
  `inputs_embeds` on both paths), but some transform token ids only (Falcon-H1 multiplies by
  `embedding_multiplier` only when given `input_ids`). The probe compares the input of the
  first decoder layer on both paths: equal, or a constant multiple (that factor is then applied
  to every row the engine feeds), or the family is refused.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import CapabilityError
from . import cache as caches

_FITS: weakref.WeakKeyDictionary[Any, Fit] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Fit:
    family: str
    embed_scale: float = 1.0  # token path rows = embed(ids) * embed_scale


def family_name(model: Any) -> str:
    cfg = getattr(model, "config", None)
    return str(getattr(cfg, "model_type", None) or type(model).__name__)


def fit(model: Any) -> Fit:
    """The probe's verdict for this model (cached); raises CapabilityError for a refused family."""
    got = _FITS.get(model)
    if got is None:
        got = _probe(model)
        _FITS[model] = got
    return got


def _first_layer(model: Any) -> Any:
    try:
        layers = model.get_decoder().layers
        return layers[0]
    except (AttributeError, IndexError, TypeError):
        return None


@torch.no_grad()
def _probe(model: Any) -> Fit:
    family = family_name(model)
    embed = model.get_input_embeddings()
    dev = embed.weight.device
    n = int(embed.weight.shape[0])
    ids = (torch.arange(5, device=dev) * 7 + 3)[None] % n
    mask = torch.ones_like(ids)
    seen: list = []

    def hook(_module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().float())

    layer = _first_layer(model)
    handle = layer.register_forward_pre_hook(hook, with_kwargs=True) if layer is not None else None
    try:
        try:
            ref = model(input_ids=ids, attention_mask=mask, past_key_values=caches.new_cache(model, 1), use_cache=True)
            caches.check(ref.past_key_values, family)
            rows = embed(ids)
            got = model(
                inputs_embeds=rows, attention_mask=mask, past_key_values=caches.new_cache(model, 1), use_cache=True
            ).logits
        except CapabilityError:
            raise
        except (TypeError, ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError) as e:
            raise CapabilityError(
                f"the transformers engine cannot drive the {family} family: its forward with a "
                f"cache, an attention mask and input embeddings failed ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})"
            ) from e
    finally:
        if handle is not None:
            handle.remove()
    want = ref.logits.float()
    if _same(got.float(), want):
        return Fit(family)
    if len(seen) == 2:  # find a constant factor between the two paths' first-layer inputs
        a, b = (x.flatten() for x in seen)
        i = int(b.abs().argmax())
        scale = _snap(model, float(a[i]) / float(b[i]), embed.weight.dtype) if float(b[i]) != 0 else 1.0
        if torch.allclose(a, b * scale, rtol=_eps(embed.weight.dtype), atol=1e-6 * float(a.abs().max())):
            got = model(
                inputs_embeds=rows * scale,
                attention_mask=mask,
                past_key_values=caches.new_cache(model, 1),
                use_cache=True,
            ).logits
            if _same(got.float(), want):
                return Fit(family, embed_scale=scale)
    raise CapabilityError(
        f"the transformers engine cannot feed soft inputs to the {family} family: its token path "
        f"transforms token embeddings in a way input embeddings cannot reproduce"
    )


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(b.abs().max()))))


def _eps(dtype: torch.dtype) -> float:
    return 4 * float(torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-6


def _snap(model: Any, ratio: float, dtype: torch.dtype) -> float:
    """The config value the ratio was measured from (e.g. `embedding_multiplier`), when one
    matches it to the model's float precision, so rows are scaled exactly as the model scales."""
    values = [
        (k, float(v))
        for k, v in model.config.to_dict().items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v
    ]
    close = [("embed" not in k, abs(v - ratio), v) for k, v in values if abs(v - ratio) <= _eps(dtype) * abs(ratio)]
    return min(close)[2] if close else ratio
