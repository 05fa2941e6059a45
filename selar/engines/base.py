"""The engine contract: what every engine declares and provides.

A `Model` is a model loaded on one engine, with its tokenizer and what the decoder needs to know
of it (vocabulary, stop ids, context, think tokens). Its `Capabilities` say what it can feed and
how it runs rows. `Model.run` decodes prompts to the end; step-wise engines (transformers,
llama.cpp) implement `make_engine`, an `Engine` that the shared decode loop (`DecodeSession`)
drives one step at a time, so rows can join and leave between steps; an engine with its own
scheduler (vLLM) overrides `run` instead. Methods declare the input kinds they feed
(`MethodSpec.inputs`); `Model.check_method` refuses a method whose kinds the engine lacks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from ..config import GenerationConfig
from ..decode import Engine, RowOutput, new_session, run_to_end
from ..errors import CapabilityError, ConfigError
from ..methods import get_method_spec
from ..methods.base import VocabInfo
from ..sources import import_string

THINK_TOKENS = ("<think>", "</think>")
KIND_NAMES = {
    "token": "token ids",
    "sparse": "a sparse mixture of token embeddings",
    "dense": "a dense mixture over the whole vocabulary",
    "hidden": "hidden states",
}


@dataclass(frozen=True)
class Capabilities:
    inputs: frozenset[str] = frozenset({"token", "sparse", "dense"})  # input kinds it can feed
    stepwise: bool = True  # runs the shared DecodeSession (rows join and leave between steps)
    streaming: bool = True  # per-token callbacks while decoding
    logit_lens: bool = False  # every layer's hidden states (selar analyze logit-lens)
    answer_guard: bool = True  # soft_scope "guarded": soft inputs end at a row's first answer marker
    force_answer: bool = True  # force_answer_at: the answer forced at a token budget (`selar.forcing`)


@dataclass(frozen=True)
class EngineSpec:
    name: str
    entry: str  # "module:attr" of an object with load(name, *, dtype, device, trust_remote_code,
    # **options) -> Model and sizing(rows, positions) -> dict of load options;
    # engines that are not step-wise also give serve(...)
    capabilities: Capabilities
    help: str = ""
    install: str = ""  # how to get its library, for error messages
    # where its tests run, and what is known of it on a GPU (the README's engine matrix shows both)
    tested: str = "CPU"
    gpu: str = "not run on a GPU"

    def load(self) -> Any:
        return import_string(self.entry)


ENGINES: dict[str, EngineSpec] = {}


def register_engine(spec: EngineSpec, *, replace: bool = False) -> EngineSpec:
    if spec.name in ENGINES and not replace:
        raise ConfigError(f"an engine named {spec.name!r} is already registered (pass replace=True to replace it)")
    ENGINES[spec.name] = spec
    return spec


def get_engine(name: str) -> EngineSpec:
    try:
        return ENGINES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown engine {name!r}; known engines: {', '.join(ENGINES)}") from None


def engines_with(capability: str, kinds: Optional[list[str]] = None) -> list[str]:
    """Names of the engines that have a capability (or, for "inputs", feed all these kinds)."""
    if capability == "inputs":
        return [n for n, s in ENGINES.items() if set(kinds or ()) <= s.capabilities.inputs]
    return [n for n, s in ENGINES.items() if getattr(s.capabilities, capability)]


def missing_kinds(engine: str, method: str) -> list[str]:
    """The input kinds `method` feeds that `engine` cannot (empty when the engine runs it)."""
    return sorted(get_method_spec(method).inputs - get_engine(engine).capabilities.inputs)


def method_matrix(methods: Sequence[str], engines: Sequence[str]) -> list[dict[str, str]]:
    """One row per method: for each engine, "runs" or "refused: <the input kinds it lacks>"."""
    rows = []
    for m in methods:
        row = {"method": m}
        for e in engines:
            missing = missing_kinds(e, m)
            row[e] = "runs" if not missing else "refused: " + " and ".join(KIND_NAMES[k] for k in missing)
        rows.append(row)
    return rows


def refuse_method(engine: str, capabilities: Capabilities, method: str) -> None:
    """Raise CapabilityError, naming what is missing and where it runs, when `method` feeds an input
    kind that `engine` (with these capabilities) cannot feed."""
    spec = get_method_spec(method)
    missing = sorted(spec.inputs - capabilities.inputs)
    if missing:
        able = engines_with("inputs", missing)
        where = f"only the {able[0]} engine can" if len(able) == 1 else f"use the {' or '.join(able)} engine"
        kinds = " and ".join(KIND_NAMES[k] for k in missing)
        raise CapabilityError(f"{spec.display} feeds {kinds}, which the {engine} engine cannot feed; {where}")


class Model:
    """A loaded model on one engine. Subclasses set the fields in `__init__` (see `set_tokenizer`)."""

    engine: str = ""
    capabilities: Capabilities = Capabilities()
    hf_model: Any = None  # the transformers module, on the transformers engine only

    def __init__(
        self,
        tokenizer: Any,
        *,
        name: str,
        source: str,
        vocab_size: int,
        stop_ids: Sequence[int],
        max_positions: Optional[int],
        load_seconds: float = 0.0,
        info: Optional[dict[str, Any]] = None,
    ):
        self.tokenizer, self.name, self.source = tokenizer, name, source
        self.vocab_size, self.max_positions = vocab_size, max_positions
        self.stop_ids = sorted({int(i) for i in stop_ids if i is not None})
        self.load_seconds, self.info = load_seconds, dict(info or {})
        vocab = tokenizer.get_vocab()
        self.think_start, self.think_end = (vocab.get(t) for t in THINK_TOKENS)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.stop_ids or [0])[0]

    @property
    def is_thinking(self) -> bool:
        return self.think_end is not None

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def vocab_info(self) -> VocabInfo:
        return VocabInfo(
            size=self.vocab_size,
            think_start=self.think_start,
            think_end=self.think_end,
            tokenizer=self.tokenizer,
            latent=self.latent_heads(),
        )

    def latent_heads(self) -> Any:
        """The latent-reasoning heads of a `selar train` model, if this is one."""
        return None

    # -- capabilities ------------------------------------------------------------------------
    def require(self, capability: str, what: str) -> None:
        """Raise CapabilityError unless this engine has `capability` (a Capabilities flag)."""
        if not getattr(self.capabilities, capability):
            raise CapabilityError(
                f"{what} needs {capability.replace('_', ' ')}, which the {self.engine} engine "
                f"does not have; use the {' or '.join(engines_with(capability))} engine"
            )

    def check_method(self, method: str) -> None:
        """Raise CapabilityError when `method` feeds an input kind this engine cannot."""
        refuse_method(self.engine, self.capabilities, method)

    # -- running rows --------------------------------------------------------------------------
    def make_engine(self) -> Engine:
        """A new step-wise engine over this model (one per decode session)."""
        raise CapabilityError(f"the {self.engine} engine runs its own decode loop (no step-wise sessions)")

    def run(
        self,
        prompts: Sequence[Sequence[int]],
        cfg: GenerationConfig,
        seeds: Sequence[int],
        *,
        batch_size: int = 16,
        on_step: Optional[Callable[[list[int], list[int], list[bool]], None]] = None,
    ) -> list[RowOutput]:
        """Decode every prompt to the end; rows in prompt order. `on_step(prompt indices, tokens,
        soft)` is called each step (streaming). Step-wise engines decode batches of similar
        lengths (less padding); an engine with its own scheduler overrides this."""
        self.check_method(cfg.method)
        if on_step is not None:
            self.require("streaming", "token streaming")
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Optional[RowOutput]] = [None] * len(prompts)
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            cb = None
            if on_step is not None:

                def cb(rows: Tensor, toks: Tensor, soft: Tensor, idx: list[int] = idx) -> None:
                    on_step([idx[r] for r in rows.tolist()], toks.tolist(), soft.tolist())

            rows = run_to_end(new_session(self, cfg, on_step=cb), [prompts[i] for i in idx], [seeds[i] for i in idx])
            for i, row in zip(idx, rows):
                row.id = i
                results[i] = row
        return [r for r in results if r is not None]

    def expect_work(self, tokens: float) -> None:
        """Declare decode work to come (rows x new tokens; float("inf") for a server), so an engine
        may prepare for a long job (the transformers engine compiles its step under compile="auto")."""

    def close(self) -> None:
        """Free what the engine holds outside Python's memory (llama.cpp handles, vLLM workers)."""
