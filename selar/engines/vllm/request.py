"""What a request asks of the vLLM plugin, and the server-wide defaults of `selar serve --engine vllm`.

A request asks for a method through flat `selar_` options in `SamplingParams.extra_args` (so they
pass through `vllm serve`'s `vllm_xargs`): `{"selar_method": "selar", "selar_tau": 0.5}`. Its
sampling settings are the request's own (temperature, top_p, top_k, min_p, presence_penalty,
frequency_penalty, repetition_penalty, seed, max_tokens, min_tokens, ignore_eos, stop); a
`selar_<setting>` overrides the first eight, which the plugin applies (selar's runner does, and
asks vLLM itself for plain greedy on the forced logits); the others are vLLM's to apply.
Every sampling setting of selar is placed in exactly one of these tables, so a new one is
refused until it is placed. Pure Python: nothing here needs vLLM except `make_sampling_params`.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from typing import Any, Optional

from ...config import SAMPLING_FIELDS, GenerationConfig, SamplingConfig, env_json
from ...errors import CapabilityError, ConfigError
from ...methods import all_option_names, make_config, option_names
from ..base import engines_with, get_engine, refuse_method

PREFIX = "selar_"
DEFAULTS_ENV = "SELAR_VLLM_DEFAULTS"  # the server's defaults, handed to vLLM's processes
# sampling settings the plugin applies itself (a request's selar_ option, or the server's default)
PENALTIES = ("presence_penalty", "frequency_penalty", "repetition_penalty")  # see `penalties`
OVERRIDABLE = ("temperature", "top_p", "top_k", "min_p", *PENALTIES, "seed")
PLUGIN_ONLY = ("soft_scope", "answer_markers")
# settings vLLM applies to every request: selar's name -> the request's own (SamplingParams) name
VLLM_OWN = {"max_new_tokens": "max_tokens", "stop": "stop", "min_new_tokens": "min_tokens", "ignore_eos": "ignore_eos"}
# `selar serve --engine vllm --set NAME=...`: vLLM's generation config holds these defaults (a
# request's own settings win); vLLM has no server default for the other VLLM_OWN settings
GENERATION_CONFIG = ("temperature", "top_p", "top_k", "min_p", *PENALTIES, "max_new_tokens")
# selar settings the plugin cannot apply: name -> why. A sampling setting added to selar but not
# placed above is refused, not silently dropped
FORCING = (
    "the answer forced at a token budget is a rule of selar's shared decode loop, which vLLM does not run; "
    "use the " + " or ".join(engines_with("force_answer")) + " engine"
)
UNSUPPORTED = {"force_answer_at": FORCING, "forced_answer_tokens": FORCING} | {
    k: "the vLLM plugin does not apply it yet"
    for k in SAMPLING_FIELDS
    if k not in set(OVERRIDABLE) | set(PLUGIN_ONLY) | set(VLLM_OWN) | {"force_answer_at", "forced_answer_tokens"}
}
# method options the plugin cannot apply when set (not None): name -> why
UNSUPPORTED_OPTIONS = {
    "max_switch_count": "SwiR's switch-count control ends rows, which a vLLM logits processor cannot do "
    "(run it on the transformers or llama.cpp engine, or leave max_switch_count unset)",
}


def refuse_options(cfg: GenerationConfig) -> None:
    """CapabilityError, in one sentence, when `cfg` sets a method option or (away from its default)
    a sampling setting the plugin cannot apply."""
    default = SamplingConfig()
    for name, why in UNSUPPORTED.items():
        if getattr(cfg.sampling, name) != getattr(default, name):
            raise CapabilityError(f"{name} is not supported on the vLLM engine: {why}")
    for name, why in UNSUPPORTED_OPTIONS.items():
        if getattr(cfg.options, name, None) is not None:
            raise CapabilityError(f"{name} is not supported on the vLLM engine: {why}")


def request_args(method: str, options: Optional[dict] = None, key: Optional[str] = None) -> dict:
    """extra_args for a SamplingParams that runs `method` with these options."""
    args: dict[str, Any] = {PREFIX + "method": method}
    for k, v in (options or {}).items():
        args[PREFIX + k] = v
    if key is not None:
        args[PREFIX + "key"] = key  # the request's soft-step record is kept for the runner
    return args


def _unprefixed(args: Optional[dict]) -> dict:
    return {k[len(PREFIX) :]: v for k, v in (args or {}).items() if isinstance(k, str) and k.startswith(PREFIX)}


def server_defaults() -> dict:
    """The server's defaults (unprefixed): `method`, method options, `seed`, `soft_scope`."""
    return _unprefixed(env_json(DEFAULTS_ENV))


def parse_request(params: Any) -> Optional[tuple[GenerationConfig, Optional[str]]]:
    """(GenerationConfig, record key) of a request, or None when it asks for no method.

    The request's own selar_ options are strict (an option its method lacks is an error); a
    server default applies only where the request's method has that option and the request
    does not set it. The seed: selar_seed, else the request's seed, else the server's, else random."""
    own = _unprefixed(getattr(params, "extra_args", None))
    defaults = server_defaults()
    method = own.pop("method", defaults.get("method"))
    if method is None:
        return None
    if not isinstance(method, str):
        raise ConfigError(f"selar_method must be a method name, got {method!r}")
    refuse_method("vllm", get_engine("vllm").capabilities, method)
    key = own.pop("key", None)
    for name in sorted(own.keys() & (set(VLLM_OWN) | set(UNSUPPORTED))):
        if name in VLLM_OWN:
            raise ConfigError(f"selar_{name} is not an option: the request's own {VLLM_OWN[name]} sets it")
        raise CapabilityError(f"selar_{name}: {UNSUPPORTED[name]}")
    names = option_names(method)
    # the server's sampling defaults other than these are vLLM's (generation config), not the plugin's
    opts = {k: v for k, v in defaults.items() if k in names and (k not in SAMPLING_FIELDS or k in PLUGIN_ONLY)}
    opts.update(own)
    seed = own.get("seed", getattr(params, "seed", None))
    if seed is None:
        seed = defaults.get("seed", random.getrandbits(62))
    top_k = params.top_k if params.top_k and params.top_k > 0 else 0
    request = {
        "temperature": float(params.temperature),
        "top_p": float(params.top_p),
        "top_k": int(top_k),
        "min_p": float(params.min_p),
        **{k: float(getattr(params, k)) for k in PENALTIES},
        "max_new_tokens": max(1, int(params.max_tokens or 1)),
    }
    cfg = make_config(method, **{**request, **opts, "seed": seed})
    refuse_options(cfg)
    return cfg, key


def make_sampling_params(cfg: GenerationConfig, seed: int, key: str, stop_ids: list[int]) -> Any:
    """vLLM SamplingParams of one row of selar's runner: selar draws the token (seeded, as on
    every engine) and forces it, so vLLM itself samples greedily from the forced logits."""
    from vllm import SamplingParams

    s = cfg.sampling
    extra = request_args(cfg.method, asdict(cfg.options), key=key)
    extra.update({PREFIX + k: getattr(s, k) for k in OVERRIDABLE})
    extra[PREFIX + "seed"] = seed
    if s.soft_scope != "auto":
        extra[PREFIX + "soft_scope"] = s.soft_scope
    if s.answer_markers != SamplingConfig().answer_markers:
        extra[PREFIX + "answer_markers"] = list(s.answer_markers)
    # the model's stop ids as selar reads them, and only those (as on every engine): vLLM's own
    # eos handling off, so a tokenizer eos outside them does not end rows here alone
    return SamplingParams(
        temperature=0.0,
        max_tokens=s.max_new_tokens,
        min_tokens=s.min_new_tokens,
        stop=list(s.stop) or None,
        stop_token_ids=[] if s.ignore_eos else list(stop_ids),
        ignore_eos=True,
        skip_special_tokens=True,
        extra_args=extra,
    )


def split_server_defaults(method: str, defaults: dict, max_tokens: Optional[int] = None) -> tuple[dict, dict]:
    """Where `selar serve --engine vllm --method METHOD --set ...` defaults go: (vLLM generation-
    config overrides, the plugin's defaults as the `SELAR_VLLM_DEFAULTS` object). Sampling settings
    become vLLM's defaults for requests that do not set them (selar's paper settings where `--set`
    gives none); method options, `soft_scope` and `seed` are the plugin's defaults for requests
    that do not set them; what vLLM cannot take from a server is refused (ConfigError)."""
    unknown = sorted(set(defaults) - all_option_names())
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}")
    for name in sorted(defaults.keys() & (set(VLLM_OWN) | set(UNSUPPORTED))):
        if name in UNSUPPORTED:
            raise CapabilityError(f"--set {name} is not supported with --engine vllm: {UNSUPPORTED[name]}")
        if name not in GENERATION_CONFIG:
            raise ConfigError(
                f"--set {name} cannot be a server default with --engine vllm: vLLM takes {VLLM_OWN[name]} from "
                f"each request only (send `{VLLM_OWN[name]}` with the request)"
            )
    refuse_options(make_config(method, **{k: v for k, v in defaults.items() if k in option_names(method)}))
    if max_tokens is not None and defaults.get("max_new_tokens", 0) > max_tokens:
        raise ConfigError(f"--set max_new_tokens={defaults['max_new_tokens']} is more than --max-tokens {max_tokens}")
    paper = SamplingConfig()
    gen = {k: getattr(paper, k) for k in GENERATION_CONFIG if k != "max_new_tokens"}
    gen.update({k: v for k, v in defaults.items() if k in GENERATION_CONFIG})  # vLLM's names are these
    plugin = {PREFIX + "method": method}
    plugin.update({PREFIX + k: v for k, v in defaults.items() if k not in GENERATION_CONFIG})
    return gen, plugin
