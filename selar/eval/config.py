"""`EvalConfig`: what one `selar eval` run is, validated up front, and the options each method
runs with on each dataset (the protocol's defaults, then the user's --set)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from ..methods import get_method_spec, make_config, option_names
from . import datasets as ds
from . import protocol

SCHEDULES = ("fixed", "continuous")
# named lists of methods for --methods; "arena": cot and every training-free soft method (no ablations)
METHOD_PRESETS = {
    "arena": [
        "cot",
        "selar",
        "soft-thinking",
        "soft-thinking-gumbel",
        "soft-thinking-dirichlet",
        "swir",
        "moi",
        "thinkrouter",
        "multiplex",
    ],
}


def expand_methods(names: list[str]) -> list[str]:
    """The methods of a --methods list, presets expanded in place, each once."""
    out: list[str] = []
    for n in names:
        out += [m for m in METHOD_PRESETS.get(n, [n]) if m not in out]
    return out


def sets_for(sets: dict, method: str) -> dict:
    """The --set options (`sets`) that apply to `method`: "opt" for every method that has it,
    "method.opt" for one. ConfigError for an unknown method or a "method.opt" it does not have."""
    names = option_names(method)
    opts: dict = {}
    for key, value in sets.items():
        target, _, opt = key.rpartition(".")
        if target and target != method:
            get_method_spec(target)
            continue
        if opt not in names:
            if target:
                raise ConfigError(f"method {method} has no option {opt!r}")
            continue
        opts[opt] = value
    return opts


@dataclass
class EvalConfig:
    model: str
    datasets: list[str]
    methods: list[str]
    samples: int = 1
    limit: Optional[int] = None
    seed: int = 0
    sets: dict = field(default_factory=dict)  # "option" or "method.option" -> value
    batch_size: int = 8
    dtype: str = "auto"
    engine: str = "transformers"  # or "llamacpp", "vllm"
    hub: bool = False
    data_files: dict = field(default_factory=dict)  # dataset -> path (offline files)
    data: Optional[str] = None  # your own benchmark file
    fields: dict = field(default_factory=dict)
    num_shards: int = 1
    shard_index: int = 0
    schedule: str = "fixed"  # "fixed" batches (bit-identical resume) or "continuous" batching (faster)
    prompt_template: Optional[str] = None  # the user message, with {question}; None: the official one

    def __post_init__(self) -> None:
        from ..engines import get_engine
        from ..engines.base import refuse_method

        capabilities = get_engine(self.engine).capabilities  # from the registry: nothing is loaded
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be fixed or continuous, got {self.schedule!r}")
        if not self.datasets and not self.data:
            raise ConfigError("give --datasets or --data FILE")
        if not self.methods:
            raise ConfigError("give at least one method")
        for m in self.methods:
            get_method_spec(m)
            refuse_method(self.engine, capabilities, m)  # before the slow model load, not after it
        for d in self.datasets:
            ds.get_dataset(d)
        if self.samples < 1:
            raise ConfigError(f"samples must be at least 1, got {self.samples}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be at least 1, got {self.limit}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise ConfigError(f"shard index must be in [0, {self.num_shards}), got {self.shard_index}")
        if self.prompt_template is not None and "{question}" not in self.prompt_template:
            raise ConfigError("prompt_template must hold {question}, where the problem's text goes")
        unused = [k for k in self.sets if "." not in k and not any(k in option_names(m) for m in self.methods)]
        if unused:
            raise ConfigError(f"option(s) {', '.join(unused)} apply to none of {', '.join(self.methods)}")
        for d in self.dataset_names():
            for m in self.methods:
                self.method_options(d, m)  # validates every --set

    @property
    def template(self) -> str:
        return self.prompt_template or protocol.PROMPT_TEMPLATE

    def dataset_names(self) -> list[str]:
        return list(self.datasets) + ([Path(self.data).stem] if self.data else [])

    def user_options(self, method: str) -> dict:
        """The --set options that apply to `method` ("opt" for every method that has it, "method.opt" for one)."""
        return sets_for(self.sets, method)

    def method_options(self, dataset: str, method: str, *, thinking: bool = False, guard: bool = True) -> dict:
        """Options of one method on one dataset: the protocol's defaults (for a thinking model or
        not; `guard`: the engine can run the answer guard), then --set. Validated."""
        opts = {**protocol.defaults(dataset, method, thinking=thinking, guard=guard), **self.user_options(method)}
        make_config(method, **opts)  # validate
        return opts

    def results_fingerprint(self) -> dict:
        """Everything that changes what a result line holds (batch size included: batches fix
        the numerics in reduced precision). Options at the default they had before they existed
        are left out, so older run directories stay resumable; the protocol version is always in,
        so a run made under other protocol defaults is never continued by this one."""
        d = json.loads(json.dumps(dataclasses.asdict(self), default=str))
        if d.get("schedule") == "fixed":
            d.pop("schedule")
        if d.get("engine") == "transformers":
            d.pop("engine")
        if d.get("prompt_template") is None:
            d.pop("prompt_template")
        d["protocol"] = protocol.VERSION
        return d
