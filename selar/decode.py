"""The decode loop. It knows nothing of any method: each step it builds p_t, draws a token,
asks the method for the emitted tokens and next inputs, records them, and drops finished rows
from the batch and the cache (only on steps where some row finished).

`DecodeSession` is the loop as an object, so that rows can join between steps (continuous
batching in the server); `decode` runs one batch to the end."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional, Protocol

import torch
from torch import Tensor

from . import sampling
from .config import FinishReason, GenerationConfig, SamplingConfig, stop_checker, stop_tail
from .errors import CapabilityError, ConfigError
from .forcing import ForcedAnswer, close_scope, force_tokens, forced_answer, forced_rows
from .methods import get_method_spec
from .methods.base import Method, Mixture, StepContext, VocabInfo
from .scope import AnswerGuard, answer_guard, marked_mask, row_tails, scope_at_start, scope_step


class Engine(Protocol):
    """What the decode loop drives: one step-wise batch of rows over a model (one per session).
    Engines that can feed hidden states back also set `supports_hidden`, and keep each row's last
    hidden state in `hidden` once the loop sets `keep_hidden`."""

    def add(self, prompts: list[list[int]]) -> Tensor: ...  # prefill rows, append them; (n, V) logits
    def step(self, inputs: Mixture) -> Tensor: ...  # one step of every row; (B, V) float32 logits
    def select(self, keep: Tensor) -> None: ...  # keep these rows (the others finished)
    def reset(self) -> None: ...  # drop every row


# finish reasons as small integers inside the vectorised step, named outside it; when several
# apply on one step, the later check wins: length, method, stop string, cancelled, stop id
_CODE: dict[FinishReason, int] = {"length": 1, "stop_string": 2, "method": 3, "cancelled": 4, "stop": 0}
_NAME: dict[int, FinishReason] = {c: n for n, c in _CODE.items()}


@dataclass
class RowOutput:
    id: int
    token_ids: list[int]
    finish_reason: FinishReason
    soft: list[bool]
    entropy: list[float]
    forced_at: Optional[int] = None  # force_answer_at: the step its answer was forced at (None: not forced)


def step_context(
    logits: Tensor,
    cfg: SamplingConfig,
    need: int,
    *,
    seeds: Tensor,
    steps: Tensor,
    in_scope: Tensor,
    limit: Tensor,
    hidden: Optional[Tensor] = None,
) -> StepContext:
    """p_t on its candidates, the drawn token and what a method sees: the one place that turns a
    step's logits into a `StepContext` (the decode loop and the vLLM plugin both call it)."""
    ids, probs = sampling.candidates(logits, cfg, need)
    drawn = logits.argmax(-1) if cfg.greedy else sampling.sample(ids, probs, seeds, steps)
    return StepContext(
        logits=logits,
        cand_ids=ids,
        cand_probs=probs,
        sampled=drawn,
        in_scope=in_scope,
        step=steps,
        max_new_tokens=limit,
        temperature=cfg.temperature if cfg.temperature > 0 else 1.0,
        hidden=hidden,
        seeds=seeds,
    )


class DecodeSession:
    """Rows decoding together with one method and one sampling config.

    `stop_check(row_id, tail) -> bool` (optional) implements stop strings: it sees a row's last
    `stop_tail` tokens (the tail a stop string can span; see `text.stop_tail`), never its history;
    `on_step(row_ids, tokens, soft)` is called every step with the rows' ids;
    `answer_guard` (optional) ends a row's soft scope at its first answer marker. The scope rules
    (`selar.scope`) are applied after every method step: `think_end` is the model's `</think>`
    (fed plainly whenever emitted), `reasoning_scope` whether it closes the soft scope.
    `forced` (needed when `cfg.force_answer_at` is set): the forced answer's token ids
    (`selar.forcing`), which rows emit once they reach their budget."""

    def __init__(
        self,
        engine: Engine,
        method: Method,
        cfg: SamplingConfig,
        *,
        stop_ids: Sequence[int],
        think_end: Optional[int],
        reasoning_scope: bool,
        think_start: Optional[int] = None,
        max_positions: Optional[int] = None,
        stop_check: Optional[Callable[[int, list[int]], bool]] = None,
        stop_tail: int = 0,
        on_step: Optional[Callable[[Tensor, Tensor, Tensor], None]] = None,
        answer_guard: Optional[AnswerGuard] = None,
        forced: Optional[ForcedAnswer] = None,
    ):
        self.engine, self.method, self.cfg = engine, method, cfg
        if cfg.force_answer_at and forced is None:
            raise ConfigError("force_answer_at needs the forced text's ids: pass forced=forcing.forced_answer(...)")
        self.forced = forced if cfg.force_answer_at else None
        self.guard = answer_guard
        self.think_end, self.think_start, self.reasoning_scope = think_end, think_start, reasoning_scope
        self.max_positions, self.stop_check, self.on_step = max_positions, stop_check, on_step
        self.stop_tail = stop_tail if stop_check is not None else 0
        self.stop_ids = torch.tensor(sorted(set(stop_ids)), dtype=torch.long)
        self.need = method.num_candidates
        self.need_hidden = bool(getattr(method, "needs_hidden", False))
        if self.need_hidden:
            if not getattr(engine, "supports_hidden", False):
                raise CapabilityError(
                    f"method {method.name!r} feeds hidden states back, which the "
                    f"{type(engine).__name__} engine does not support; use the transformers engine"
                )
            engine.keep_hidden = True  # type: ignore[attr-defined]
        self.logits: Optional[Tensor] = None
        self.rows: dict[str, Tensor] = {}  # per-row tensors, pruned and joined together
        self.state: dict[str, Tensor] = {}  # the method's per-row state, likewise
        self.cancelled: set[int] = set()

    @property
    def size(self) -> int:
        return 0 if self.logits is None else self.logits.shape[0]

    def add(
        self,
        prompts: Sequence[Sequence[int]],
        ids: Sequence[int],
        seeds: Sequence[int],
        max_new_tokens: Optional[Sequence[int]] = None,
        stop_tails: Optional[Sequence[int]] = None,
    ) -> None:
        """Prefill new rows; they take part from the next step on. `stop_tails[i]`: how many last
        tokens of row i `stop_check` reads, 0 for none (default: the session's `stop_tail`)."""
        logits = self.engine.add([list(p) for p in prompts])
        dev, n = logits.device, len(prompts)
        self.stop_ids = self.stop_ids.to(dev)
        limit = max_new_tokens or [self.cfg.max_new_tokens] * n
        if self.max_positions is not None:  # a row also stops at the model's context
            limit = [max(1, min(m, self.max_positions - len(p))) for m, p in zip(limit, prompts)]
        width = max(limit)
        new = {
            "id": torch.tensor(list(ids), dtype=torch.long, device=dev),
            "seed": torch.tensor(list(seeds), dtype=torch.long, device=dev),
            "limit": torch.tensor(limit, dtype=torch.long, device=dev),
            "step": torch.zeros(n, dtype=torch.long, device=dev),
            "in_scope": torch.tensor([self._scope_at_start(p) for p in prompts], dtype=torch.bool, device=dev),
            "tail": torch.tensor(list(stop_tails or [self.stop_tail] * n), dtype=torch.long, device=dev),
            "tokens": torch.full((n, width), -1, dtype=torch.long, device=dev),
            "soft": torch.zeros((n, width), dtype=torch.bool, device=dev),
            "entropy": torch.zeros((n, width), dtype=torch.float32, device=dev),
        }
        if self.forced is not None:  # its answer forced at its budget (within its limit), see selar.forcing
            new["force_at"] = torch.tensor(self.forced.to(dev).plan(limit), dtype=torch.long, device=dev)
            new["open"] = self.forced.open_at_start([self._think_open(p) for p in prompts], dev)
            new["forced"] = torch.full((n, self.forced.ids.shape[1]), -1, dtype=torch.long, device=dev)
        if self.cfg.penalised:  # vendor penalties: each row's generated-token counts (and its prompt's tokens)
            new["counts"] = torch.zeros(logits.shape, dtype=torch.int32, device=dev)
            if self.cfg.repetition_penalty != 1.0:
                new["prompt"] = sampling.token_mask(prompts, logits.shape[-1], dev)
        state = self.method.init_state(n, dev)
        if self.logits is None:
            self.logits, self.rows, self.state = logits, new, state
            return
        self.logits = torch.cat([self.logits, logits])
        self.rows = {k: _cat(self.rows[k], new[k]) for k in self.rows}
        self.state = {k: _cat(self.state[k], state[k]) for k in self.state}

    def _scope_at_start(self, prompt: Sequence[int]) -> bool:
        return self._think_open(prompt) if self.reasoning_scope else True

    def _think_open(self, prompt: Sequence[int]) -> bool:
        return scope_at_start(prompt, self.think_start, self.think_end)

    def cancel(self, row_id: int) -> None:
        """Finish a row at the next step (e.g. its client went away)."""
        self.cancelled.add(row_id)

    @torch.no_grad()
    def step(self) -> list[RowOutput]:
        """Emit one token for every row; returns the rows that finished."""
        r, logits = self.rows, self.logits
        assert logits is not None, "step() needs rows (add them first)"
        if self.cfg.penalised:  # before p_t: the method sees the penalised distribution
            logits = sampling.apply_penalties(logits, r["counts"], r.get("prompt"), self.cfg)
        if self.cfg.min_new_tokens and self.stop_ids.numel():  # stop ids cannot be drawn yet in early rows
            early = r["step"] < self.cfg.min_new_tokens
            logits[:, self.stop_ids] = logits[:, self.stop_ids].masked_fill(early[:, None], float("-inf"))
        if self.forced is not None:  # rows at their budget: plain inputs from now on
            close_scope(r)
        ctx = step_context(
            logits,
            self.cfg,
            self.need,
            seeds=r["seed"],
            steps=r["step"],
            in_scope=r["in_scope"],
            limit=r["limit"],
            hidden=getattr(self.engine, "hidden", None) if self.need_hidden else None,
        )
        out = self.method.step(ctx, self.state)
        self.state = out.state if out.state is not None else self.state
        if self.forced is not None:  # rows inside their forced text emit it
            out = replace(out, tokens=force_tokens(self.forced, r, out.tokens))
        tok, at = out.tokens, r["step"][:, None]
        r["tokens"].scatter_(1, at, tok[:, None])
        if self.cfg.penalised:
            r["counts"].scatter_add_(1, tok[:, None], torch.ones_like(r["counts"][:, :1]))
        marked = marked_mask(self.guard, r["tokens"], r["step"], tok, r["in_scope"])
        out, r["in_scope"] = scope_step(out, r["in_scope"], self.think_end, ends_at_think=self.reasoning_scope,
                                        marked=marked)  # fmt: skip
        r["soft"].scatter_(1, at, out.soft[:, None])
        if out.entropy is not None:
            r["entropy"].scatter_(1, at, out.entropy.float()[:, None])
        if self.on_step is not None:
            self.on_step(r["id"], tok, out.soft)
        r["step"] = r["step"] + 1

        code = torch.where(r["step"] >= r["limit"], _CODE["length"], -1)
        if out.stop is not None:
            code = torch.where(out.stop, _CODE["method"], code)
        if self.stop_check is not None:  # stop strings: a per-row check of its tail, on rows that have them
            sel = (r["tail"] > 0).nonzero()[:, 0]
            if sel.numel():
                tails = row_tails(r["tokens"], sel, r["step"][sel], r["tail"][sel])
                hit = [self.stop_check(i, t) for i, t in zip(r["id"][sel].tolist(), tails)]
                code[sel] = torch.where(torch.tensor(hit, device=code.device), _CODE["stop_string"], code[sel])
        if self.cancelled:
            gone = torch.tensor([i in self.cancelled for i in r["id"].tolist()], device=code.device)
            code = torch.where(gone, _CODE["cancelled"], code)
        if not self.cfg.ignore_eos:
            code = torch.where(torch.isin(tok, self.stop_ids), _CODE["stop"], code)
        done = code >= 0
        finished: list[RowOutput] = []
        if bool(done.any()):  # one host sync per step, and a cache copy only on these steps
            finished = self._collect(done, code)
            keep = (~done).nonzero()[:, 0]
            self.rows = {k: v[keep] for k, v in r.items()}
            self.state = {k: v[keep] for k, v in self.state.items()}
            if keep.numel() == 0:
                self.logits = None
                self.engine.reset()
                return finished
            self.engine.select(keep)
            inputs = out.inputs.select(keep)
        else:
            inputs = out.inputs
        self.logits = self.engine.step(inputs)
        return finished

    def _collect(self, done: Tensor, code: Tensor) -> list[RowOutput]:
        r = self.rows
        idx = done.nonzero()[:, 0]
        n = r["step"][idx].tolist()
        toks, soft, ent = r["tokens"][idx].tolist(), r["soft"][idx].tolist(), r["entropy"][idx].tolist()
        forced = forced_rows(n, r["force_at"][idx].tolist()) if "force_at" in r else [None] * len(n)
        out = []
        for j, (rid, c) in enumerate(zip(r["id"][idx].tolist(), code[idx].tolist())):
            self.cancelled.discard(rid)
            out.append(RowOutput(rid, toks[j][: n[j]], _NAME[c], soft[j][: n[j]], ent[j][: n[j]], forced[j]))
        return out


def _cat(a: Tensor, b: Tensor) -> Tensor:
    """Concatenate per-row tensors along the batch, padding trailing dims of the narrower one."""
    if a.dim() > 1 and a.shape[1:] != b.shape[1:]:
        width = max(a.shape[1], b.shape[1])
        fill = -1 if a.dtype == torch.long else 0

        def pad(x: Tensor) -> Tensor:
            extra = torch.full((x.shape[0], width - x.shape[1], *x.shape[2:]), fill, dtype=x.dtype, device=x.device)
            return torch.cat([x, extra], 1)

        a, b = pad(a), pad(b)
    return torch.cat([a, b])


def run_to_end(session: DecodeSession, prompts: Sequence[Sequence[int]], seeds: Sequence[int]) -> list[RowOutput]:
    """Decode these prompts to the end in one batch; outputs in prompt order."""
    session.add(prompts, range(len(prompts)), seeds)
    results: dict[int, RowOutput] = {}
    while session.size:
        for row in session.step():
            results[row.id] = row
    return [results[i] for i in range(len(prompts))]


def run_continuous(
    session: DecodeSession, prompts: Sequence[Sequence[int]], seeds: Sequence[int], batch_size: int
) -> Iterator[RowOutput]:
    """Continuous batching: decode these prompts with at most `batch_size` rows at once, a finished
    row replaced by the next prompt at once. Yields rows as they finish (`row.id` is the prompt's
    index). Rows are seeded alone, so results do not depend on the schedule (up to the batch-size
    dependence of reduced-precision kernels; none in float32)."""
    queue = deque(range(len(prompts)))
    while queue or session.size:
        free = min(batch_size - session.size, len(queue))
        if free > 0:
            ids = [queue.popleft() for _ in range(free)]
            session.add([prompts[i] for i in ids], ids, [seeds[i] for i in ids])
        yield from session.step()


class SessionModel(Protocol):
    """What `new_session` reads of a loaded model (`selar.engines.base.Model`)."""

    tokenizer: Any
    vocab_size: int
    stop_ids: list[int]
    max_positions: Optional[int]
    think_start: Optional[int]
    think_end: Optional[int]

    def make_engine(self) -> Engine: ...
    def vocab_info(self) -> VocabInfo: ...
    def require(self, capability: str, what: str) -> None: ...
    def check_method(self, method: str) -> None: ...


def new_session(
    model: SessionModel,
    config: GenerationConfig,
    *,
    on_step: Optional[Callable[[Tensor, Tensor, Tensor], None]] = None,
    stop_check: Optional[Callable[[int, list[int]], bool]] = None,
) -> DecodeSession:
    """A decode session of `model` (a step-wise engine's model) with one method and sampling
    config; rows are added later. `stop_check` defaults to the config's stop strings."""
    model.require("stepwise", "a step-wise decode session (continuous batching, streaming, analysis)")
    model.check_method(config.method)
    cfg = config.sampling
    if stop_check is None and cfg.stop:
        check = stop_checker(model.tokenizer, cfg.stop)
        stop_check = lambda _row, ids: check(ids)  # noqa: E731
    guard = answer_guard(model.tokenizer, cfg.answer_markers, model.vocab_size) if cfg.guarded else None
    forced = forced_answer(model.tokenizer, model.think_end, cfg) if cfg.force_answer_at else None
    return DecodeSession(
        model.make_engine(),
        get_method_spec(config.method).factory(config.options, model.vocab_info()),
        cfg,
        stop_ids=model.stop_ids,
        think_end=model.think_end,
        think_start=model.think_start,
        reasoning_scope=cfg.reasoning_only(model.think_end is not None),
        max_positions=model.max_positions,
        stop_check=stop_check,
        stop_tail=stop_tail(cfg.stop) if cfg.stop else 64,
        on_step=on_step,
        answer_guard=guard,
        forced=forced,
    )


def decode(
    engine: Engine,
    prompts: Sequence[Sequence[int]],
    method: Method,
    cfg: SamplingConfig,
    *,
    seeds: Sequence[int],
    **kw: Any,
) -> list[RowOutput]:
    """Decode one batch to the end with a given engine and method; outputs in prompt order."""
    return run_to_end(DecodeSession(engine, method, cfg, **kw), prompts, seeds)
