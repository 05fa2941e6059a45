"""transformers' `custom_generate` entry: selar's decode loop behind `model.generate`.

    out = model.generate(**inputs, custom_generate=PATH_OR_REPO, trust_remote_code=True,
                         method="selar", tau=0.5, max_new_tokens=256, tokenizer=tok)

transformers loads `custom_generate/generate.py` from PATH_OR_REPO (a local folder or a Hub repo,
see `hub_folder`) and calls its `generate(model, **generate_arguments)`; that file re-exports
`generate` below. The model is the user's already loaded transformers model: it is wrapped
(`selar.wrap`) and decoded by the shared loop (`DecodeSession`), rows joining as one batch.

What maps to what:
- decoding: `do_sample=False` (the default of most generation configs) is greedy (selar's
  temperature 0); `do_sample=True` samples with the config's `temperature`, `top_p`, `top_k`,
  `min_p`. Rows are seeded by selar's `seed` (default 0; row j of a prompt's
  `num_return_sequences` gets seed + j), not by torch's global generator.
- `max_new_tokens` (or `max_length` minus the input width), `eos_token_id`, `pad_token_id`,
  `stop_strings`, `num_return_sequences`, `attention_mask` (left or right padding) as in generate.
- `min_new_tokens` (or `min_length` minus the input width; the larger of the two when both are
  set): the eos ids are held off until a row has that many new tokens (selar's `min_new_tokens`;
  beyond `max_new_tokens` it holds them off to the end, as in generate).
- `method` (default "selar") and that method's options (`tau`, `k`, ...), `seed`, `soft_scope`,
  `stop`, `answer_markers`, `force_answer_at`/`forced_answer_tokens` (the answer forced at a token
  budget): selar's own keywords.
- Returns the `sequences` tensor (inputs followed by the new tokens, rows that finished early
  padded with `pad_token_id`), or with `return_dict_in_generate=True` a `SelarGenerateOutput`:
  `sequences`; `scores` (`output_scores=True`: per step a (rows, vocab) tensor of the scores the
  token was drawn from: the raw logits when greedy, else logits / temperature with the tokens
  outside top-k/top-p/min-p at -inf, as transformers' warpers give them; the eos ids at -inf
  while min_new_tokens holds them off); `logits` (`output_logits=True`: raw logits); at steps
  after a row has finished, its row holds -inf.
  Beside those: `soft` (rows, new tokens) bool (steps whose next input was a soft mixture),
  `num_soft_steps` (rows,) and `finish_reasons` (one of selar's finish reasons per row).

Settings selar does not implement (beam search, repetition penalties, logits processors,
stopping criteria, streamers, assistant models...) raise a ConfigError when passed to this call;
when they come from the model's own generation config they are ignored with a warning.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import warnings
import weakref
from typing import Any, Optional

import torch

from ..api import new_session
from ..config import SAMPLING_FIELDS
from ..engines.transformers import wrap
from ..errors import ConfigError
from ..methods import get_method_spec, make_config, option_names
from ..sampling import candidates

# generation-config fields selar does not implement: passing one raises, a model default is ignored
UNSUPPORTED = (
    "num_beams", "num_beam_groups", "diversity_penalty", "penalty_alpha", "dola_layers", "constraints",
    "force_words_ids", "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "sequence_bias", "suppress_tokens", "begin_suppress_tokens",
    "forced_bos_token_id", "forced_eos_token_id", "typical_p", "epsilon_cutoff", "eta_cutoff",
    "exponential_decay_length_penalty", "renormalize_logits", "guidance_scale", "watermarking_config",
    "token_healing", "max_time", "output_attentions", "output_hidden_states", "prompt_lookup_num_tokens",
    "low_memory", "cache_implementation", "prefill_chunk_size",
)  # fmt: skip
# arguments of transformers' generate that have no meaning here unless left at their default
REFUSED_ARGS = (
    "logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus", "assistant_model",
    "streamer", "negative_prompt_ids", "negative_prompt_attention_mask",
)  # fmt: skip
# sampling fields transformers does not have
SELAR_SAMPLING = ("seed", "stop", "soft_scope", "answer_markers", "force_answer_at", "forced_answer_tokens")
_TOKENIZERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


@functools.lru_cache(maxsize=1)
def _output_class() -> type:
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    @dataclasses.dataclass
    class SelarGenerateOutput(GenerateDecoderOnlyOutput):
        """transformers' decoder-only output plus what selar knows of each row."""

        soft: Optional[torch.Tensor] = None  # (rows, new tokens) bool: the next input was a soft mixture
        num_soft_steps: Optional[torch.Tensor] = None  # (rows,)
        finish_reasons: Optional[list[str]] = None  # stop | length | stop_string | method

    return SelarGenerateOutput


def _tokenizer(model: Any, given: Any) -> Any:
    if given is not None:
        return given
    if model in _TOKENIZERS:
        return _TOKENIZERS[model]
    from transformers import AutoTokenizer

    path = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(
            f"selar's generate needs the model's tokenizer and could not load one from {path!r} ({e}); "
            f"pass tokenizer=... to model.generate"
        ) from None
    _TOKENIZERS[model] = tok
    return tok


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def _split_kwargs(method: str, kwargs: dict, gc_fields: set[str]) -> tuple[dict, dict]:
    """(generation-config settings, selar options) of the keyword arguments; unknown ones raise."""
    own = (option_names(method) - set(SAMPLING_FIELDS)) | set(SELAR_SAMPLING)
    hf, ours, unknown = {}, {}, []
    for key, value in kwargs.items():
        if key in own:
            ours[key] = value
        elif key in gc_fields:
            hf[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ConfigError(
            f"selar's generate does not take {', '.join(sorted(unknown))}: it takes transformers' generation "
            f"settings and the {method} method's options ({', '.join(sorted(own))})"
        )
    return hf, ours


def _generation_config(model: Any, generation_config: Any, hf: dict) -> Any:
    from transformers import GenerationConfig

    gc = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    gc.update(**hf)
    default = GenerationConfig()
    for name in UNSUPPORTED:
        if getattr(gc, name, None) == getattr(default, name, None):
            continue
        if name in hf:
            raise ConfigError(f"selar's generate does not implement {name}; leave it at its default")
        warnings.warn(f"selar's generate ignores the model's generation setting {name}={getattr(gc, name)!r}")
    return gc


def _sampling(gc: Any, width: int, ours: dict) -> dict:
    """selar's sampling settings from a generation config (and selar's own keywords)."""
    opts: dict[str, Any] = {}
    if gc.do_sample:
        opts["temperature"] = float(gc.temperature if gc.temperature is not None else 1.0)
        opts["top_p"] = float(gc.top_p if gc.top_p is not None else 1.0)
        opts["top_k"] = int(gc.top_k or 0)
        opts["min_p"] = float(gc.min_p or 0.0)
    else:
        opts["temperature"] = 0.0
    if gc.max_new_tokens is not None:
        opts["max_new_tokens"] = int(gc.max_new_tokens)
    else:
        opts["max_new_tokens"] = int(gc.max_length) - width
        if opts["max_new_tokens"] < 1:
            raise ConfigError(
                f"max_length={gc.max_length} leaves no room after inputs of {width} tokens; set max_new_tokens"
            )
    # transformers' min_new_tokens counts new tokens, min_length the input too; both hold eos off
    least = max(int(gc.min_new_tokens or 0), int(gc.min_length or 0) - width)
    if least > 0:
        opts["min_new_tokens"] = min(least, opts["max_new_tokens"])  # beyond the budget: held off to the end
    stop = gc.stop_strings or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    extra = ours.pop("stop", ()) or ()
    opts["stop"] = stop + ((extra,) if isinstance(extra, str) else tuple(extra))
    return opts


def generate(model: Any, inputs: Optional[torch.Tensor] = None, generation_config: Any = None, **kwargs: Any) -> Any:
    """`model.generate` with selar's decode loop (see the module's docstring for the mapping)."""
    for name in REFUSED_ARGS:
        value = kwargs.pop(name, None)
        if value:  # None, False and empty processor lists are the defaults
            raise ConfigError(f"selar's generate does not support {name}")
    kwargs.pop("use_model_defaults", None)
    method = kwargs.pop("method", None) or "selar"
    get_method_spec(method)  # an unknown method fails here, naming the known ones
    tokenizer = _tokenizer(model, kwargs.pop("tokenizer", None))
    if kwargs.get("inputs_embeds") is not None:
        raise ConfigError("selar's generate takes input_ids, not inputs_embeds")
    kwargs.pop("inputs_embeds", None)
    input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ConfigError("selar's generate needs input_ids: a (rows, tokens) tensor of token ids")
    mask = kwargs.pop("attention_mask", None)
    kwargs.pop("use_cache", None)  # the engine always uses the model's cache

    from transformers import GenerationConfig

    hf, ours = _split_kwargs(method, kwargs, set(vars(GenerationConfig())))
    gc = _generation_config(model, generation_config, hf)
    eos = _ids(gc.eos_token_id)
    pad = gc.pad_token_id if gc.pad_token_id is not None else (eos[0] if eos else tokenizer.pad_token_id)
    if pad is None:
        raise ConfigError("selar's generate needs a pad_token_id (or an eos_token_id) to pad finished rows")
    if mask is None:  # as transformers infers it
        has_pad = gc.pad_token_id is not None and gc.pad_token_id not in eos
        mask = input_ids.ne(gc.pad_token_id) if has_pad else torch.ones_like(input_ids)
    if mask.shape != input_ids.shape:
        raise ConfigError(f"attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(input_ids.shape)}")
    n_ret = int(gc.num_return_sequences or 1)
    samp = _sampling(gc, input_ids.shape[1], ours)
    if n_ret > 1 and samp["temperature"] == 0.0:
        raise ConfigError("num_return_sequences > 1 needs do_sample=True (greedy rows would all be equal)")
    seed = int(ours.pop("seed", 0))
    cfg = make_config(method, **samp, **ours)

    sm = wrap(model, tokenizer, name=str(getattr(model.config, "_name_or_path", "") or "model"))
    if eos:
        sm.stop_ids = sorted(set(eos))
    sm.pad_id = int(pad)
    rows = [ids[m.bool()].tolist() for ids, m in zip(input_ids.cpu(), mask.cpu())]
    if any(not r for r in rows):
        raise ConfigError("a row of input_ids has no token under its attention_mask")
    prompts = [r for r in rows for _ in range(n_ret)]
    seeds = [seed + j for _ in rows for j in range(n_ret)]
    want_scores, want_logits = bool(gc.output_scores), bool(gc.output_logits)
    out, steps = _decode(sm, cfg, prompts, seeds, keep=want_scores or want_logits)

    base = input_ids.repeat_interleave(n_ret, dim=0)
    width = max(len(o.token_ids) for o in out)
    new = torch.full((len(out), width), int(pad), dtype=torch.long)
    soft = torch.zeros((len(out), width), dtype=torch.bool)
    for i, o in enumerate(out):
        new[i, : len(o.token_ids)] = torch.tensor(o.token_ids, dtype=torch.long)
        soft[i, : len(o.soft)] = torch.tensor(o.soft, dtype=torch.bool)
    sequences = torch.cat([base, new.to(base.device)], dim=1)
    if not gc.return_dict_in_generate:
        return sequences
    scores = logits = None
    if want_scores:
        least, stops = cfg.sampling.min_new_tokens, list(sm.stop_ids)
        scores = tuple(
            _full(ids, _processed(_held_off(lg, t < least, stops), cfg.sampling), len(out))
            for t, (ids, lg) in enumerate(steps)
        )
    if want_logits:
        logits = tuple(_full(ids, lg, len(out)) for ids, lg in steps)
    return _output_class()(
        sequences=sequences,
        scores=scores,
        logits=logits,
        soft=soft,
        num_soft_steps=soft.sum(1),
        finish_reasons=[o.finish_reason for o in out],
    )


def _decode(sm: Any, cfg: Any, prompts: list[list[int]], seeds: list[int], keep: bool) -> tuple[list, list]:
    """Rows decoded as one batch (outputs in prompt order) and, when `keep`, each step's
    (row ids, logits) of the rows still running."""
    session = new_session(sm, cfg)
    session.add(prompts, range(len(prompts)), seeds)
    done: dict[int, Any] = {}
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []
    while session.size:
        if keep:
            assert session.logits is not None
            steps.append((session.rows["id"].clone(), session.logits.clone()))
        for row in session.step():
            done[row.id] = row
    return [done[i] for i in range(len(prompts))], steps


def _held_off(logits: torch.Tensor, early: bool, stop_ids: list[int]) -> torch.Tensor:
    """The logits a token was drawn from: at `early` steps (before min_new_tokens; every row here
    starts at step 0) the stop ids at -inf, as the decode loop masks them and transformers'
    min-length processors leave its scores."""
    if not early or not stop_ids:
        return logits
    return logits.index_fill(1, torch.tensor(stop_ids, device=logits.device), float("-inf"))


def _processed(logits: torch.Tensor, s: Any) -> torch.Tensor:
    """Scores as transformers' warpers leave them: raw when greedy; else logits / temperature
    with tokens outside top-k, top-p and min-p at -inf."""
    if s.greedy:
        return logits
    ids, probs = candidates(logits, s, 1)
    vals = torch.full_like(logits, float("-inf"))
    kept = torch.where(probs > 0, logits.gather(1, ids) / s.temperature, torch.full_like(probs, float("-inf")))
    return vals.scatter(1, ids, kept)


def _full(ids: torch.Tensor, values: torch.Tensor, rows: int) -> torch.Tensor:
    """(rows, vocab) with these rows' values, -inf for rows that had finished."""
    out = torch.full((rows, values.shape[1]), float("-inf"), dtype=values.dtype, device=values.device)
    out[ids.to(values.device)] = values
    return out
