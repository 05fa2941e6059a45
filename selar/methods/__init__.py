"""Registry of decoding methods. Add one with `register(MethodSpec(...))`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError
from .adaptive_latent import AdaptiveLatent, AdaptiveLatentOptions
from .base import Method, Mixture, StepContext, StepOutput, VocabInfo
from .cot import CoT, CoTOptions
from .selar import SeLaR, SeLaROptions
from .soft_thinking import SoftThinking, SoftThinkingOptions
from .swir import SwiR, SwiROptions


@dataclass(frozen=True)
class MethodSpec:
    name: str
    factory: Callable[[Any, VocabInfo], Method]
    options: type
    preset: dict = field(default_factory=dict)  # option overrides of a named variant
    help: str = ""


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    METHODS[spec.name] = spec
    return spec


register(MethodSpec("cot", CoT, CoTOptions, help="chain-of-thought: always feed the emitted token"))
register(MethodSpec("selar", SeLaR, SeLaROptions, help="entropy-gated soft inputs with a contrastive push"))
register(MethodSpec("selar-no-gate", SeLaR, SeLaROptions, {"gate": False}, help="ablation: soft at every reasoning step"))
register(MethodSpec("selar-no-push", SeLaR, SeLaROptions, {"push_weight": 0.0}, help="ablation: lambda = 0"))
register(MethodSpec("soft-thinking", SoftThinking, SoftThinkingOptions, help="every reasoning step soft (Zhang et al. 2025)"))
register(MethodSpec("swir", SwiR, SwiROptions, help="switch latent/explicit on entropy trends (Shi et al. 2025)"))
register(MethodSpec("adaptive-latent", AdaptiveLatent, AdaptiveLatentOptions,
                    help="trained latent reasoning: hidden states fed back until a stop head says STOP (selar train)"))


def get_method_spec(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


__all__ = ["METHODS", "MethodSpec", "Method", "Mixture", "StepContext", "StepOutput", "VocabInfo",
           "register", "get_method_spec"]
