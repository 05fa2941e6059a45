"""selar's plugin on vLLM's Model Runner V2: its logits processor and the model-state hook.

Model Runner V2 (vLLM's default on CUDA builds with Triton) loads only processors of its own
interface (`vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`) and refuses the V1 one
that `plugin.SelarLogitsProcessor` is; selar therefore pins the V1 runner wherever it starts vLLM
with that processor (`runner.pin_v1_runner`). `SelarLogitsProcessorV2` (import path
`LOGITS_PROCESSOR_V2`) is the same plugin on the V2 interface: the same `state.SoftState`, so the
same method objects and the decode layer's scope rules, keyed by V2's request slots.

How V2 differs, read in vLLM 0.32's `v1/worker/gpu` (model_runner.py, input_batch.py,
sample/sampler.py, states.py):

* Requests live in slots recycled through a free list; there is no removal callback, so a slot is
  fully re-initialised in `add_request` (`SoftState.add` clears it; a finished request's record
  stays readable until its slot is reused, and a resumed request's earlier slot is cleared by key).
* `add_request` gets the sampling params only; the request's tokens are read in
  `apply_staged_writes`, after the runner has written them (`prompt_len`, `prefill_len`: the prompt
  plus, for a request resuming after preemption, its output so far; `all_token_ids`).
* `apply(logits, ctx)` gets one row per request in this step's order: `ctx.expanded_idx_mapping`
  maps rows to slots and `ctx.pos` is each row's last input position (V1 records it in the
  forward), so a row's sample is real exactly as in V1.
* The forward sees the batch in the same order, `input_batch.idx_mapping`; vLLM's model state
  builds the model's inputs (`prepare_inputs`). The soft-input classes name a model state
  (`get_model_state_cls`, read by V2 only) that publishes (idx_mapping, query_start_loc) to the
  state before every forward, so `SoftState.embed` finds each request's pending mixture by slot.

Verified on CPU (tests/test_vllm_v2.py): vLLM's V2 loader builds the processor; its `apply`, on
CPU tensors, gives the V1 processor's tokens and soft steps and the decode loop's fed mixtures and
entropies over reordered rows, requests leaving and joining, preemption and resumption; `embed`
through the published slot map replaces exactly the rows whose mixture is pending. Not verified
(no GPU run yet): a full V2 engine (it needs Triton), CUDA graphs around the outer forward
(PIECEWISE is requested as for V1), pipeline parallelism, async scheduling's overlapped steps.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from torch import Tensor

from .plugin import check_config, validate_params, vocab_info
from .request import parse_request
from .state import SoftState, current_state, set_state

LOGITS_PROCESSOR_V2 = "selar.engines.vllm.v2:SelarLogitsProcessorV2"


def publish_batch(input_batch: Any) -> None:
    """Hand this forward's slot map and query starts to the processor's state (V2 model state)."""
    state = current_state()
    if state is not None and state.v2:
        n = int(input_batch.num_reqs)
        state.batch = (input_batch.idx_mapping[:n], input_batch.query_start_loc[: n + 1])


@cache
def model_state_class(model_cls: type) -> type:
    """Model Runner V2's model state for a soft-input class: the base class's own (vLLM's default
    for the standard decoders the plugin accepts), publishing the batch before each forward."""
    own = getattr(model_cls, "get_model_state_cls", None)
    if own is not None:
        parent: Any = own()
    else:
        from vllm.v1.worker.gpu.model_states.default import DefaultModelState

        parent = DefaultModelState

    class SelarModelState(parent):
        def prepare_inputs(self, input_batch: Any, req_states: Any) -> Any:
            publish_batch(input_batch)
            return super().prepare_inputs(input_batch, req_states)

    SelarModelState.__qualname__ = SelarModelState.__name__ = f"Selar{parent.__name__}"
    return SelarModelState


def _make_processor_class() -> type:
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor

    class SelarLogitsProcessorV2(LogitsProcessor):
        """Runs a selar method for the requests that ask for one, on Model Runner V2."""

        @classmethod
        def validate_params(cls, sampling_params: Any) -> None:
            validate_params(sampling_params)

        def __init__(self, vllm_config: Any, req_states: Any) -> None:
            check_config(vllm_config)
            self.req_states = req_states
            self.state = SoftState(req_states.max_num_reqs, req_states.device, vocab_info(vllm_config))
            self.state.v2 = True
            self.staged: list[tuple[int, Any]] = []
            set_state(self.state)

        def add_request(self, req_idx: int, sampling_params: Any) -> bool:
            self.staged.append((req_idx, sampling_params))
            return sampling_params is not None and parse_request(sampling_params) is not None

        def apply_staged_writes(self) -> None:
            if not self.staged:
                return
            rs = self.req_states
            for i, params in self.staged:  # the runner has written their tokens by now
                n_prompt, n = int(rs.prompt_len.np[i]), int(rs.prefill_len.np[i])
                ids = rs.all_token_ids.gpu[i, :n].tolist()
                self.state.add(i, params, ids[:n_prompt], ids[n_prompt:])
            self.staged.clear()

        def apply(self, logits: Tensor, ctx: Any) -> Tensor:
            return self.state.apply(logits, ctx.expanded_idx_mapping, ctx.pos)

    return SelarLogitsProcessorV2


def __getattr__(name: str) -> Any:  # the processor subclasses vLLM's class, so it is built on first use
    if name == "SelarLogitsProcessorV2":
        cls = _make_processor_class()
        cls.__module__ = __name__
        globals()[name] = cls
        return cls
    raise AttributeError(name)
