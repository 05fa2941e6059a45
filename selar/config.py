"""Validated configuration: the sampling settings shared by every method, plus the
options of one method. Errors say what is wrong and what is allowed."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

SOFT_SCOPES = ("auto", "reasoning", "all")


def check_range(name: str, value: Any, lo: float | None = None, hi: float | None = None,
                kind: type = float, lo_open: bool = False) -> None:
    """Raise ConfigError unless lo <= value <= hi (lo < value when lo_open)."""
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if value != value:  # NaN
        raise ConfigError(f"{name} must be a number, got NaN")
    below = lo is not None and (value <= lo if lo_open else value < lo)
    above = hi is not None and value > hi
    if below or above:
        lo_s = "-inf" if lo is None else f"{lo}"
        hi_s = "inf" if hi is None else f"{hi}"
        bracket = "(" if lo_open else "["
        raise ConfigError(f"{name} must be in {bracket}{lo_s}, {hi_s}], got {value!r}")


@dataclass
class SamplingConfig:
    """How the emitted token is drawn. Paper settings are the defaults:
    temperature 0.6, top-p 0.95, top-k 20, min-p 0. temperature 0 means greedy."""

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    min_p: float = 0.0
    max_new_tokens: int = 1024
    seed: int = 0
    stop: tuple[str, ...] = ()
    soft_scope: str = "auto"  # auto: "reasoning" for thinking models, "all" otherwise

    def __post_init__(self) -> None:
        check_range("temperature", self.temperature, 0.0)
        check_range("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        check_range("top_k", self.top_k, 0, kind=int)
        check_range("min_p", self.min_p, 0.0, 1.0)
        check_range("max_new_tokens", self.max_new_tokens, 1, kind=int)
        check_range("seed", self.seed, kind=int)
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError("stop strings must be non-empty strings")
        if self.soft_scope not in SOFT_SCOPES:
            raise ConfigError(f"soft_scope must be one of {', '.join(SOFT_SCOPES)}, got {self.soft_scope!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingConfig))


@dataclass
class GenerationConfig:
    """A method name, its validated options and the sampling settings."""

    method: str = "selar"
    options: Any = None  # the method's own Options dataclass instance
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def to_dict(self) -> dict:
        return {"method": self.method, "options": dataclasses.asdict(self.options),
                "sampling": dataclasses.asdict(self.sampling)}


def make_config(method: str = "selar", **kwargs: Any) -> GenerationConfig:
    """Build a GenerationConfig from flat keyword options, e.g.
    make_config("selar", tau=0.4, k=5, temperature=0). Unknown names are an error."""
    from .methods import get_method_spec

    spec = get_method_spec(method)
    sampling_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in SAMPLING_FIELDS}
    option_names = {f.name for f in dataclasses.fields(spec.options)}
    unknown = sorted(set(kwargs) - option_names)
    if unknown:
        allowed = sorted(option_names | set(SAMPLING_FIELDS))
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for method {method!r}; "
                          f"allowed: {', '.join(allowed)}")
    try:
        sampling = SamplingConfig(**sampling_kw)
    except TypeError as e:  # pragma: no cover - guarded by the field check above
        raise ConfigError(str(e)) from None
    options = spec.options(**{**spec.preset, **kwargs})
    return GenerationConfig(method=spec.name, options=options, sampling=sampling)


def env_json(name: str) -> dict:
    """A JSON object from an environment variable ({} when unset)."""
    text = os.environ.get(name)
    if not text:
        return {}
    try:
        d = json.loads(text)
    except ValueError:
        raise ConfigError(f"{name} is not JSON: {text!r}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{name} must be a JSON object, got {text!r}")
    return d
