"""Registry of decoding methods. Add one with `register(MethodSpec(...))`; see docs/design.md, "Adding a method".

A method's options and the sampling settings share one flat namespace (`make_config("selar",
tau=0.4, temperature=0)`, `--set`, request fields), so `register` refuses a method whose option
names a sampling setting, and a second method under a name already taken.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import SAMPLING_FIELDS, GenerationConfig, SamplingConfig
from ..errors import ConfigError
from .adaptive_latent import AdaptiveLatent, AdaptiveLatentOptions
from .base import INPUT_KINDS, Method, Mixture, StepContext, StepOutput, VocabInfo
from .cot import CoT, CoTOptions
from .moi import MoI, MoIOptions
from .multiplex import Multiplex, MultiplexOptions
from .selar import SeLaR, SeLaROptions
from .soft_thinking import SoftThinking, SoftThinkingOptions
from .swir import SwiR, SwiROptions
from .thinkrouter import ThinkRouter, ThinkRouterOptions


@dataclass(frozen=True)
class MethodSpec:
    name: str
    factory: Callable[[Any, VocabInfo], Method]
    options: type
    preset: dict[str, Any] = field(default_factory=dict)  # option overrides of a named variant
    help: str = ""
    # the input kinds the method feeds (engines refuse a method whose kinds they lack):
    # "token", "sparse" (a mixture of a few token embeddings), "dense" (a mixture over the whole
    # vocabulary), "hidden" (the model's last hidden state)
    inputs: frozenset[str] = frozenset({"token", "sparse"})
    title: str = ""  # display name in messages (default: the name)

    @property
    def display(self) -> str:
        return self.title or self.name

    def option_names(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.options)}


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add a method. A name already registered raises unless `replace`; an option that shares a
    name with a sampling setting raises (rename it: e.g. Soft Thinking's `mix_min_p`)."""
    if spec.name in METHODS and not replace:
        raise ConfigError(f"a method named {spec.name!r} is already registered (pass replace=True to replace it)")
    clash = sorted(spec.option_names() & set(SAMPLING_FIELDS))
    if clash:
        raise ConfigError(
            f"method {spec.name!r}: option(s) {', '.join(clash)} share a name with a sampling "
            f"setting, so they could never be set; rename them"
        )
    unknown = sorted(set(spec.inputs) - set(INPUT_KINDS))
    if unknown:
        raise ConfigError(
            f"method {spec.name!r}: unknown input kind(s) {', '.join(unknown)}; known: {', '.join(INPUT_KINDS)}"
        )
    METHODS[spec.name] = spec
    return spec


register(
    MethodSpec(
        "cot",
        CoT,
        CoTOptions,
        help="chain-of-thought: always feed the emitted token",
        inputs=frozenset({"token"}),
        title="CoT",
    )
)
register(
    MethodSpec("selar", SeLaR, SeLaROptions, help="entropy-gated soft inputs with a contrastive push", title="SeLaR")
)
register(
    MethodSpec("selar-no-gate", SeLaR, SeLaROptions, {"gate": False}, help="ablation: soft at every reasoning step")
)
register(MethodSpec("selar-no-push", SeLaR, SeLaROptions, {"push_weight": 0.0}, help="ablation: lambda = 0"))
register(
    MethodSpec(
        "soft-thinking",
        SoftThinking,
        SoftThinkingOptions,
        help="every reasoning step soft (Zhang et al. 2025)",
        title="Soft Thinking",
    )
)
for _noise in ("gumbel", "dirichlet"):
    register(
        MethodSpec(
            f"soft-thinking-{_noise}",
            SoftThinking,
            SoftThinkingOptions,
            {"noise": _noise},
            help=f"Randomized Soft Thinking: {_noise} weights around p (Wu et al. 2025)",
        )
    )
register(
    MethodSpec(
        "moi",
        MoI,
        MoIOptions,
        help="Mixture of Inputs: the sampled token blended with p_t (Zhuang et al. 2025)",
        title="MoI",
    )
)
register(
    MethodSpec(
        "thinkrouter",
        ThinkRouter,
        ThinkRouterOptions,
        help="latent when confident, the sampled token when not (Xu et al. 2026)",
        title="ThinkRouter",
    )
)
register(
    MethodSpec(
        "multiplex",
        Multiplex,
        MultiplexOptions,
        help="K independent draws merged into one input (Tang et al. 2026)",
        title="Multiplex Thinking",
    )
)
register(
    MethodSpec(
        "swir",
        SwiR,
        SwiROptions,
        help="switch latent/explicit on entropy trends (Shi et al. 2025)",
        inputs=frozenset({"token", "sparse", "dense"}),
        title="SwiR",
    )
)
register(
    MethodSpec(
        "adaptive-latent",
        AdaptiveLatent,
        AdaptiveLatentOptions,
        help="trained latent reasoning: hidden states fed back until a stop head says STOP (selar train)",
        inputs=frozenset({"token", "hidden"}),
    )
)


def get_method_spec(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


def option_names(method: str) -> set[str]:
    """Every flat option `method` accepts: its own and the sampling settings."""
    return get_method_spec(method).option_names() | set(SAMPLING_FIELDS)


def all_option_names() -> set[str]:
    """Every flat option some registered method accepts."""
    return set(SAMPLING_FIELDS).union(*(s.option_names() for s in METHODS.values()))


def make_config(method: str = "selar", **kwargs: Any) -> GenerationConfig:
    """Build a GenerationConfig from flat keyword options, e.g.
    make_config("selar", tau=0.4, k=5, temperature=0). Unknown names are an error."""
    spec = get_method_spec(method)
    sampling_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in SAMPLING_FIELDS}
    unknown = sorted(set(kwargs) - spec.option_names())
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for method {method!r}; "
            f"allowed: {', '.join(sorted(option_names(method)))}"
        )
    sampling = SamplingConfig(**sampling_kw)
    options = spec.options(**{**spec.preset, **kwargs})
    return GenerationConfig(method=spec.name, options=options, sampling=sampling)


def method_names() -> str:
    """The registered methods' names, comma-separated (for help texts and errors)."""
    return ", ".join(METHODS)


__all__ = [
    "METHODS",
    "MethodSpec",
    "Method",
    "Mixture",
    "StepContext",
    "StepOutput",
    "VocabInfo",
    "INPUT_KINDS",
    "register",
    "get_method_spec",
    "make_config",
    "option_names",
    "all_option_names",
    "method_names",
]
