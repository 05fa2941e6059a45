"""Validated configuration: the sampling settings shared by every method, plus the
options of one method. Errors say what is wrong and what is allowed."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError

SOFT_SCOPES = ("auto", "reasoning", "guarded", "all")
# soft_scope "guarded": once a row's text holds one of these, its later steps are plain tokens
ANSWER_MARKERS = ("\\boxed", "answer is", "Answer:", "answer:")
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def check_range(
    name: str, value: Any, lo: float | None = None, hi: float | None = None, kind: type = float, lo_open: bool = False
) -> None:
    """Raise ConfigError unless lo <= value <= hi (lo < value when lo_open)."""
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):  # NaN, inf
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise ConfigError(f"{name} is out of range (beyond 64 bits), got {value!r}")
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
    # vendor penalties (OpenAI/vLLM semantics), applied to the logits before p_t and the method's step:
    # presence and frequency count the row's generated tokens; repetition also its prompt's tokens
    presence_penalty: float = 0.0  # minus this once for every token already generated
    frequency_penalty: float = 0.0  # minus this times how often the token was generated
    repetition_penalty: float = 1.0  # tokens of the prompt or the output: positive logits / it, others * it
    max_new_tokens: int = 1024
    min_new_tokens: int = 0  # stop ids cannot be drawn before a row has this many tokens (as in transformers)
    ignore_eos: bool = False  # stop ids do not end a row (rows run to max_new_tokens; for equal-work benchmarks)
    # the answer forced at a token budget (SwiR's evaluation): a row that has generated this many
    # tokens without stopping emits "\n\nThe final answer is" (after </think> if its reasoning is
    # open), then at most `forced_answer_tokens` more, all fed plainly (`selar.forcing`); 0: off.
    # max_new_tokens stays the hard limit (the answer is forced sooner where it would not fit)
    force_answer_at: int = 0
    forced_answer_tokens: int = 32
    seed: int = 0
    stop: tuple[str, ...] = ()
    soft_scope: str = "auto"  # auto: "reasoning" for thinking models, "all" otherwise; or "guarded"
    answer_markers: tuple[str, ...] = ANSWER_MARKERS  # where soft_scope "guarded" ends the soft scope

    def __post_init__(self) -> None:
        check_range("temperature", self.temperature, 0.0, 1e4)
        check_range("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        check_range("top_k", self.top_k, 0, kind=int)
        check_range("min_p", self.min_p, 0.0, 1.0)
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        check_range("repetition_penalty", self.repetition_penalty, 0.0, 1e4, lo_open=True)
        check_range("max_new_tokens", self.max_new_tokens, 1, kind=int)
        check_range("min_new_tokens", self.min_new_tokens, 0, self.max_new_tokens, kind=int)
        check_range("force_answer_at", self.force_answer_at, kind=int)
        if self.force_answer_at < 0:
            raise ConfigError(
                f"force_answer_at must be 0 (off) or a token budget of 1 or more, got {self.force_answer_at}"
            )
        if self.force_answer_at > self.max_new_tokens:
            raise ConfigError(
                f"force_answer_at ({self.force_answer_at}) is beyond max_new_tokens ({self.max_new_tokens}); "
                f"raise max_new_tokens to at least force_answer_at or lower force_answer_at"
            )
        check_range("forced_answer_tokens", self.forced_answer_tokens, kind=int)
        if self.forced_answer_tokens < 1:
            raise ConfigError(
                "forced_answer_tokens must be at least 1 (the tokens a forced answer may take), "
                f"got {self.forced_answer_tokens}"
            )
        if not isinstance(self.ignore_eos, bool):
            raise ConfigError(f"ignore_eos must be true or false, got {self.ignore_eos!r}")
        check_range("seed", self.seed, kind=int)
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError("stop strings must be non-empty strings")
        if isinstance(self.answer_markers, str):
            self.answer_markers = (self.answer_markers,)
        self.answer_markers = tuple(self.answer_markers)
        if not self.answer_markers or any(not isinstance(s, str) or not s for s in self.answer_markers):
            raise ConfigError("answer_markers must be one or more non-empty strings")
        if self.soft_scope not in SOFT_SCOPES:
            raise ConfigError(f"soft_scope must be one of {', '.join(SOFT_SCOPES)}, got {self.soft_scope!r}")

    @property
    def penalised(self) -> bool:
        """Whether any vendor penalty changes the logits."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def reasoning_only(self, thinking: bool) -> bool:
        """Whether soft inputs stop at </think>: `soft_scope` resolved for a model that is
        (`thinking`) or is not a thinking model ("auto": only thinking models have a reasoning phase)."""
        return self.soft_scope in ("reasoning", "guarded") or (self.soft_scope == "auto" and thinking)

    @property
    def guarded(self) -> bool:
        """Soft inputs also stop once the row writes an answer marker (`answer_markers`): the
        answer of a model without </think> is written with plain tokens."""
        return self.soft_scope == "guarded"


SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingConfig))

# Why a row ended: a stop id, its token budget, a stop string, the method (e.g. SwiR's answer
# budget), a cancellation (client gone), or a fault while decoding it (the server's containment).
FinishReason = Literal["stop", "length", "stop_string", "method", "cancelled", "error"]


@dataclass
class GenerationConfig:
    """A method name, its validated options and the sampling settings."""

    method: str = "selar"
    options: Any = None  # the method's own Options dataclass instance
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "options": dataclasses.asdict(self.options),
            "sampling": dataclasses.asdict(self.sampling),
        }


def stop_tail(stops: Sequence[str]) -> int:
    """How many last tokens can hold a stop string (or answer marker) that the last token
    completed: one per character at most, plus slack for tokens that decode to nothing alone."""
    return max(len(s) for s in stops) + 16


def stop_checker(tokenizer: Any, stops: Sequence[str]) -> Callable[[Sequence[int]], bool]:
    """`check(ids) -> bool`: whether the decoded tail of `ids` holds a stop string (only the tail
    that can hold one is decoded, so a check costs O(longest stop), not O(length))."""
    tail = stop_tail(stops)

    def check(ids: Sequence[int]) -> bool:
        text = tokenizer.decode(list(ids[-tail:]), skip_special_tokens=True)
        return any(s in text for s in stops)

    return check


def env_json(name: str) -> dict[str, Any]:
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
