"""Teacher-forced, step-wise comparison of two arithmetic paths of one model (compiled vs eager,
engine vs engine, batch layout vs batch layout, dtype vs dtype).

Free-running soft decoding is chaotic: a 1e-6 change in a logit flips a near-tie, the flipped
token changes every later input, and two correct paths part within a few steps. So the reference
path A drives one decode session; path B is fed exactly A's inputs (the same tokens and the same
soft mixtures) at every step; each step the method is also applied to B's logits, with A's state.
Then, row by row and step by step, only where the arithmetic cannot decide the outcome:

- logits: |A - B| <= `tol` everywhere (the arithmetic's own error, asserted);
- the emitted token is the same wherever A's margin between its best two tokens exceeds 2 `tol`;
- the gate (soft or not) is the same wherever the entropy is more than `gate_tol` (default 2 `tol`)
  from `tau` (methods without a threshold: everywhere the token is decided);
- the fed input (the weights over the vocabulary) is the same within `weight_tol` (default 4 `tol`)
  wherever both are made of the same tokens (a near-tie at the edge of a top-k swaps a token in or
  out).

`report.assert_ok()` checks all of that and that most steps were decided (so a comparison cannot
pass by deciding nothing)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch

import selar
from selar import sampling
from selar.decode import DecodeSession, new_session, run_to_end, step_context
from selar.methods import make_config
from selar.scope import scope_step


@dataclass
class Report:
    tol: float
    row_steps: int = 0
    tokens_decided: int = 0
    gates_decided: int = 0
    inputs_checked: int = 0
    soft_steps: int = 0
    max_logit_err: float = 0.0
    max_weight_err: float = 0.0
    failures: list[str] = field(default_factory=list)
    rows: list[Any] = field(default_factory=list)  # the driving session's outputs (compare())

    def assert_ok(self, min_decided: float = 0.8) -> None:
        assert self.row_steps > 0, "nothing was compared"
        assert not self.failures, "\n".join(self.failures[:10])
        assert self.max_logit_err <= self.tol, f"logits differ by {self.max_logit_err:.2e} > {self.tol:.1e}"
        for what, n in (("tokens", self.tokens_decided), ("gates", self.gates_decided)):
            assert n >= min_decided * self.row_steps, f"only {n}/{self.row_steps} {what} decided"

    def __str__(self) -> str:
        return (
            f"{self.row_steps} row-steps: tokens decided {self.tokens_decided}, gates decided "
            f"{self.gates_decided}, inputs checked {self.inputs_checked} ({self.soft_steps} soft); "
            f"max |logit diff| {self.max_logit_err:.2e}, max |weight diff| {self.max_weight_err:.2e}"
        )


class _TeeEngine:
    """Engine A, with engine B fed the same inputs; B's last logits are kept beside A's."""

    def __init__(self, a: Any, b: Any):
        self.a, self.b = a, b
        self.lb: Optional[torch.Tensor] = None

    def add(self, prompts):
        la, lb = self.a.add(prompts), self.b.add(prompts)
        self.lb = lb.float() if self.lb is None else torch.cat([self.lb, lb.float()])
        return la

    def step(self, inputs):
        la, self.lb = self.a.step(inputs), self.b.step(inputs).float()
        return la

    def select(self, keep):
        self.a.select(keep)
        self.b.select(keep)
        self.lb = self.lb[keep]

    def reset(self):
        self.a.reset()
        self.b.reset()
        self.lb = None


def _dense(mix, vocab: int) -> torch.Tensor:
    if mix.ids is None:
        return mix.weights.float()
    return torch.zeros(mix.weights.shape[0], vocab).scatter_add_(1, mix.ids, mix.weights.float())


def decided(s: DecodeSession, ctx: Any, la: torch.Tensor, entropy: Optional[torch.Tensor], t: dict):
    """(token decided, gate decided) per row: the margin of the best two tokens (the Gumbel-max
    scores of p_t when sampling) beyond the arithmetic's error, and the entropy away from tau."""
    top2 = la.topk(2, -1).values
    tok_ok = (top2[:, 0] - top2[:, 1]) > 2 * t["tol"]
    if not s.cfg.greedy:  # the drawn token: Gumbel-max over log p_t, p_t of logits / T
        u = sampling.hash_uniform(s.rows["seed"], ctx.step, ctx.cand_probs.shape[1])
        score = (torch.log(ctx.cand_probs.double()) - torch.log(-torch.log(u))).topk(2, -1).values
        tok_ok &= (score[:, 0] - score[:, 1]) > 4 * t["tol"] / ctx.temperature
    gate_ok = tok_ok.clone()
    if t["tau"] is not None and entropy is not None:
        gate_ok &= (entropy.float() - t["tau"]).abs() > t["gate_tol"]
    return tok_ok, gate_ok


def _scoped(s: DecodeSession, ctx: Any, out: Any) -> Any:
    """A method's step under the decode layer's scope rules (as the session applies them; the
    answer guard aside), so what is compared is what a session feeds."""
    return scope_step(out, ctx.in_scope, s.think_end, ends_at_think=s.reasoning_scope)[0]


class _TeeMethod:
    """The session's method on A's logits (what is fed), and again on B's logits (compared)."""

    def __init__(self, method: Any, session: DecodeSession, engine: _TeeEngine, report: Report, tols: dict):
        self.method, self.session, self.engine, self.report, self.t = method, session, engine, report, tols
        self.name, self.num_candidates = method.name, method.num_candidates
        self.needs_hidden = getattr(method, "needs_hidden", False)

    def init_state(self, n, device):
        return self.method.init_state(n, device)

    def step(self, ctx, state):
        out = self.method.step(ctx, state)
        s, rep, t = self.session, self.report, self.t
        la, lb = ctx.logits.float(), self.engine.lb
        if s.cfg.penalised:  # B's logits under the session's penalties (A's are, in ctx)
            lb = sampling.apply_penalties(lb, s.rows["counts"], s.rows.get("prompt"), s.cfg)
        lb = torch.where(torch.isneginf(la), la, lb)  # the session's own masks (min_new_tokens)
        ctx_b = step_context(lb, s.cfg, s.need, seeds=s.rows["seed"], steps=ctx.step, in_scope=ctx.in_scope,
                             limit=ctx.max_new_tokens, hidden=ctx.hidden)  # fmt: skip
        out_b = _scoped(s, ctx, self.method.step(ctx_b, {k: v.clone() for k, v in state.items()}))
        out = _scoped(s, ctx, out)  # what the session feeds (it applies the same rules)
        finite = torch.isfinite(la)
        err = torch.where(finite, (la - lb).abs(), torch.zeros_like(la)).amax(-1)
        rep.max_logit_err = max(rep.max_logit_err, float(err.max()))
        tok_ok, gate_ok = decided(s, ctx, la, out.entropy, t)
        wa, wb = _dense(out.inputs, la.shape[-1]), _dense(out_b.inputs, la.shape[-1])
        same_support = ((wa != 0) == (wb != 0)).all(-1)
        in_ok = gate_ok & same_support
        werr = (wa - wb).abs().amax(-1)
        rows = s.rows["id"].tolist()
        for j in range(la.shape[0]):  # a test helper: per-row messages are fine here
            at = f"row {rows[j]} step {int(ctx.step[j])}"
            if bool(tok_ok[j]) and int(out.tokens[j]) != int(out_b.tokens[j]):
                rep.failures.append(f"{at}: token {int(out.tokens[j])} vs {int(out_b.tokens[j])}")
            if bool(gate_ok[j]) and bool(out.soft[j]) != bool(out_b.soft[j]):
                rep.failures.append(f"{at}: soft {bool(out.soft[j])} vs {bool(out_b.soft[j])}")
            if bool(in_ok[j]) and float(werr[j]) > t["weight_tol"]:
                rep.failures.append(f"{at}: fed weights differ by {float(werr[j]):.2e}")
        rep.row_steps += la.shape[0]
        rep.tokens_decided += int(tok_ok.sum())
        rep.gates_decided += int(gate_ok.sum())
        rep.inputs_checked += int(in_ok.sum())
        rep.soft_steps += int((in_ok & out.soft).sum())
        if bool(in_ok.any()):
            rep.max_weight_err = max(rep.max_weight_err, float(werr[in_ok].max()))
        return out


def session(model_a: selar.Model, engine_b: Any, method: str, *, tol: float, gate_tol: Optional[float] = None,
            weight_tol: Optional[float] = None, **kw: Any) -> tuple[DecodeSession, Report]:  # fmt: skip
    """A decode session of `model_a` whose engine drives, `engine_b` teacher-forced beside it, and
    the report its steps fill; `kw` are the method's and sampling settings (greedy unless given).
    Add rows and step it as any session; `session.engine.reset()` frees both engines."""
    cfg = make_config(method, **{"temperature": 0.0, **kw})
    s = new_session(model_a, cfg)
    report = Report(tol)
    tee = _TeeEngine(s.engine, engine_b)
    s.engine = tee
    tau = getattr(cfg.options, "tau", None)
    gate_tol = 2 * tol if gate_tol is None else gate_tol  # a normalised entropy moves less than its logits
    weight_tol = 4 * tol if weight_tol is None else weight_tol  # p_t moves like its logits, the push up to 2x
    tols = dict(tol=tol, tau=None if tau is None else float(tau), gate_tol=gate_tol, weight_tol=weight_tol)
    s.method = _TeeMethod(s.method, s, tee, report, tols)
    return s, report


def compare(model_a: selar.Model, engine_b: Any, prompts: list[list[int]], method: str, *, tol: float,
            seeds: Optional[list[int]] = None, **kw: Any) -> Report:  # fmt: skip
    """`prompts` (token ids) decoded in one batch by `session(...)` to the end; rows are seeded by
    `seeds` (default: the config's seed for every row)."""
    s, report = session(model_a, engine_b, method, tol=tol, **kw)
    try:
        report.rows = run_to_end(s, prompts, list(seeds) if seeds is not None else [int(s.cfg.seed)] * len(prompts))
    finally:
        s.engine.reset()
    return report


class SoloEngine:
    """Every row in a batch of its own (one engine per row): another batch layout of the same
    model, to compare batched decoding with rows decoded alone, teacher-forced."""

    def __init__(self, make_engine: Any):
        self.make, self.rows = make_engine, []

    def add(self, prompts):
        new = [self.make() for _ in prompts]
        logits = [e.add([p]) for e, p in zip(new, prompts)]
        self.rows += new
        return torch.cat(logits)

    def step(self, inputs):
        return torch.cat([e.step(inputs.select(torch.tensor([j]))) for j, e in enumerate(self.rows)])

    def select(self, keep):
        kept = set(keep.tolist())
        for j, e in enumerate(self.rows):
            if j not in kept:
                e.reset()
        self.rows = [self.rows[j] for j in keep.tolist()]

    def reset(self):
        for e in self.rows:
            e.reset()
        self.rows = []


class _Replay:
    """The session's method with each row's emitted token forced to a recorded one (another
    engine's or process's output): the fed inputs follow the record, and the method's own choice
    on this engine's logits is compared with it where this arithmetic decides it."""

    def __init__(self, method: Any, session: DecodeSession, record: dict, report: Report, tols: dict, tokenizer: Any):
        self.method, self.session, self.record, self.report, self.t = method, session, record, report, tols
        self.name, self.num_candidates = method.name, method.num_candidates
        self.needs_hidden = getattr(method, "needs_hidden", False)
        self.tokenizer, self.split = tokenizer, set()

    def init_state(self, n, device):
        return self.method.init_state(n, device)

    def step(self, ctx, state):
        s, rep, t = self.session, self.report, self.t
        ids, steps = s.rows["id"].tolist(), ctx.step.tolist()
        rec = torch.tensor([self.record[i][0][k] for i, k in zip(ids, steps)])
        rec_soft = [self.record[i][1][k] if self.record[i][1] is not None else None for i, k in zip(ids, steps)]
        own = _scoped(s, ctx, self.method.step(ctx, {k: v.clone() for k, v in state.items()}))
        out = self.method.step(replace(ctx, sampled=rec), state)
        la = ctx.logits.float()
        tok_ok, gate_ok = decided(s, ctx, la, own.entropy, t)
        live = torch.tensor([i not in self.split for i in ids])
        tok_ok, gate_ok = tok_ok & live, gate_ok & live
        for j in range(la.shape[0]):  # a test helper: per-row messages are fine here
            at = f"row {ids[j]} step {steps[j]}"
            if bool(tok_ok[j]) and int(own.tokens[j]) != int(rec[j]):
                a, b = (self.tokenizer.decode([int(x)]) if self.tokenizer else "" for x in (own.tokens[j], rec[j]))
                if self.tokenizer and a and b and (a.startswith(b) or b.startswith(a)):
                    self.split.add(ids[j])  # the same text split otherwise: checked up to here
                    tok_ok[j] = gate_ok[j] = live[j] = False
                    continue
                rep.failures.append(f"{at}: this engine emits {int(own.tokens[j])}, the record {int(rec[j])}")
            if bool(gate_ok[j]) and rec_soft[j] is not None and bool(own.soft[j]) != rec_soft[j]:
                rep.failures.append(f"{at}: soft {bool(own.soft[j])} here, {rec_soft[j]} in the record")
        rep.row_steps += int(live.sum())
        rep.tokens_decided += int(tok_ok.sum())
        rep.gates_decided += int(gate_ok.sum())
        rep.soft_steps += int((own.soft & live).sum())
        # The record's soft inputs are not known here, and one built here differs from the record's
        # by the arithmetic's error, which the next steps amplify (free-running soft decoding is
        # chaotic): a row is compared exactly up to its first soft input, and no further.
        self.split.update(i for i, soft, rs in zip(ids, out.soft.tolist(), rec_soft) if soft or rs)
        return replace(out, tokens=rec)


def replay(
    model: selar.Model,
    prompts: list[list[int]],
    tokens: list[list[int]],
    method: str,
    *,
    tol: float,
    soft: Optional[list[list[bool]]] = None,
    seeds: Optional[list[int]] = None,
    gate_tol: Optional[float] = None,
    retokenized: bool = False,
    **kw: Any,
) -> Report:
    """Teacher-force `model` on recorded outputs (`tokens`, and `soft` flags if known, per prompt),
    as produced by another engine or process with the same method and settings: every step is fed
    the recorded token (or this engine's soft mixture where the method goes soft), and where this
    arithmetic decides the step, the method's own token and gate must equal the record's. A row is
    compared up to its first soft input that this arithmetic does not decide (the record's may then
    differ by O(1)); the decided shares in the report say how much was compared.
    `retokenized`: the record's tokens were encoded again from its text, which may split a string
    otherwise than the model wrote it ("\n\n" as one token or two): a row is checked up to the
    first step where this engine's token and the record's are one a prefix of the other."""
    cfg = make_config(method, **{"temperature": 0.0, **kw})
    s = new_session(model, cfg)
    report = Report(tol)
    tau = getattr(cfg.options, "tau", None)
    tols = dict(tol=tol, tau=None if tau is None else float(tau), gate_tol=2 * tol if gate_tol is None else gate_tol)
    record = {i: (t, None if soft is None else soft[i]) for i, t in enumerate(tokens)}
    s.method = _Replay(s.method, s, record, report, tols, model.tokenizer if retokenized else None)
    s.cfg = dataclasses.replace(s.cfg, ignore_eos=True)  # rows end with their record
    rows = [i for i, t in enumerate(tokens) if t]
    try:
        s.add([prompts[i] for i in rows], rows, [seeds[i] if seeds else int(cfg.sampling.seed) for i in rows],
              [len(tokens[i]) for i in rows])  # fmt: skip
        while s.size:
            s.step()
    finally:
        s.engine.reset()
    return report


def joined(s: DecodeSession, enc: list[list[int]], seed: int = 5, waits: tuple[int, int] = (4, 3)) -> list[Any]:
    """Four rows joining a running batch at different steps (and leaving as they finish): row 0,
    `waits[0]` steps later rows 1-2, `waits[1]` steps later row 3, then steps until all finished.
    Returns their outputs in row order."""
    got: dict[int, Any] = {}

    def steps(n: int) -> None:
        for _ in range(n):
            got.update({r.id: r for r in s.step()})

    s.add([enc[0]], [0], [seed])
    steps(waits[0])
    s.add(enc[1:3], [1, 2], [seed, seed])  # join a running batch of different length
    steps(waits[1])
    s.add([enc[3]], [3], [seed])
    while s.size:
        steps(1)
    return [got[i] for i in range(4)]
