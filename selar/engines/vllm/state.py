"""The per-process state the logits processor and the soft-input model share.

Per state row (the V1 runner's persistent-batch index, tracked through the processor's
`update_state`; Model Runner V2's request slot, which a step maps its rows to with
`idx_mapping`): the request's method group, seed, step, its tokens so far, and its pending soft
input (position, ids, weights; or weights over the whole vocabulary, kept in `dense.DenseInputs`).
The processor writes it after each step (`apply`); the model's forward reads it (`embed`) to
replace the rows whose (request, position) has a stored mixture by `sum_j w_j E(v_j)`, where
`E` is the model's own token embedding (`embed_input_ids`, scaling included, e.g. Gemma's).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Optional

import torch
from torch import Tensor

from ...decode import step_context
from ...errors import CapabilityError
from ...methods import get_method_spec
from ...methods.base import Mixture, VocabInfo
from ...scope import AnswerGuard, answer_guard, marked_mask, scope_at_start, scope_step
from . import penalties
from .dense import DenseInputs
from .request import VLLM_OWN, parse_request

log = logging.getLogger(__name__)
MAX_GROUPS = 32  # distinct method/sampling configurations kept at once
MAX_RECORDS = 4096  # finished requests' soft-step records kept for the runner


class SoftState:
    """Per persistent-batch index: the request's method group, seed, step, and its pending soft
    input (position, ids, weights). Written by the logits processor, read by the model forward."""

    def __init__(self, capacity: int, device: torch.device, vocab: VocabInfo):
        self.cap, self.device, self.vocab = capacity, device, vocab
        z = lambda dt, fill=0: torch.full((capacity,), fill, dtype=dt, device=device)  # noqa: E731
        self.t: dict[str, Tensor] = {
            "group": z(torch.long, -1),
            "seed": z(torch.long),
            "step": z(torch.long),
            "prompt_len": z(torch.long),
            "limit": z(torch.long),
            "in_scope": z(torch.bool),
            "scoped": z(torch.bool),
            "last_pos": z(torch.long, -2),
            "pend_pos": z(torch.long, -1),
            "pend_ids": torch.zeros(capacity, 1, dtype=torch.long, device=device),
            "pend_w": torch.zeros(capacity, 1, dtype=torch.float32, device=device),
            "pend_dense": z(torch.long, -1),  # row -> its dense input this step (dense.py), -1: none
            "rec_soft": torch.zeros(capacity, 64, dtype=torch.bool, device=device),
            "rec_ent": torch.zeros(capacity, 64, dtype=torch.float32, device=device),
            "rec_tok": torch.zeros(capacity, 64, dtype=torch.long, device=device),
        }
        self.keys: list[Optional[str]] = [None] * capacity
        self.groups: dict[str, dict] = {}  # config json -> {"id", "method", "cfg", "state"}
        self.by_id: dict[int, dict] = {}
        self.next_id = 0
        self.any_pending = False
        self.active = 0
        self.records: OrderedDict[str, dict] = OrderedDict()  # finished requests' soft steps (bounded)
        self.recomputed = 0  # soft inputs of resumed (preempted) requests recomputed as plain tokens
        self.dense = DenseInputs()  # mixtures over the whole vocabulary (SwiR's)
        # Model Runner V2 (`v2`): this forward's (slot of each request, query_start_loc), published
        # by its model state before the forward; the V1 runner's batch row i is state row i
        self.v2 = False
        self.batch: Optional[tuple[Tensor, Tensor]] = None

    # group of requests sharing one method and sampling config
    def group_of(self, cfg: Any) -> dict:
        d = cfg.to_dict()  # seeds and token limits are per row, not part of a group
        d["sampling"] = {k: v for k, v in d["sampling"].items() if k != "seed" and k not in VLLM_OWN}
        key = json.dumps(d, sort_keys=True, default=str)
        g = self.groups.get(key)
        if g is None:
            if len(self.groups) >= MAX_GROUPS:  # forget configurations no running request uses
                used = set(self.t["group"].tolist())
                for k in [k for k, v in self.groups.items() if v["id"] not in used]:
                    del self.by_id[self.groups.pop(k)["id"]]
            method = get_method_spec(cfg.method).factory(cfg.options, self.vocab)
            state = method.init_state(self.cap, self.device)
            g = {"id": self.next_id, "method": method, "cfg": cfg, "state": state, "guard": self._guard_of(cfg)}
            self.next_id += 1
            self.groups[key] = g
            self.by_id[g["id"]] = g
            width = max(self.t["pend_ids"].shape[1], method.num_candidates)
            for name in ("pend_ids", "pend_w"):
                if self.t[name].shape[1] < width:
                    old = self.t[name]
                    self.t[name] = torch.zeros(self.cap, width, dtype=old.dtype, device=self.device)
                    self.t[name][:, : old.shape[1]] = old
        return g

    def _guard_of(self, cfg: Any) -> Optional[AnswerGuard]:
        """The answer guard of a group under soft_scope "guarded" (the decode loop's, same markers)."""
        if not cfg.sampling.guarded:
            return None
        markers = cfg.sampling.answer_markers
        if self.vocab.tokenizer is None:
            raise CapabilityError("soft_scope=guarded needs the model's tokenizer, which the plugin could not load")
        return answer_guard(self.vocab.tokenizer, markers, self.vocab.size)

    def _all(self):
        yield self.t
        for g in self.by_id.values():
            yield g["state"]

    def clear(self, i: int) -> None:
        if self.t["group"][i] >= 0:
            self.active -= 1
            key = self.keys[i]
            if key is not None:
                self.records[key] = self.record(i)
                while len(self.records) > MAX_RECORDS:
                    self.records.popitem(last=False)
        self.t["group"][i] = -1
        self.t["pend_pos"][i] = -1
        self.keys[i] = None

    def record(self, i: int) -> dict:
        n = int(self.t["step"][i])
        self._grow(n)
        return {"soft": self.t["rec_soft"][i, :n].tolist(), "entropy": self.t["rec_ent"][i, :n].tolist()}

    def add(self, i: int, params: Any, prompt_ids: Optional[list[int]], output_ids: list[int]) -> None:
        self.clear(i)
        parsed = parse_request(params) if params is not None else None
        if parsed is None or prompt_ids is None:
            return
        cfg, key = parsed
        if key is not None and key in self.keys:  # V2: a resumed request's earlier slot, never cleared
            self.clear(self.keys.index(key))
        g = self.group_of(cfg)
        fresh = g["method"].init_state(1, self.device)
        for name, v in g["state"].items():
            v[i] = fresh[name][0]
        scoped = cfg.sampling.reasoning_only(self.vocab.think_end is not None)
        t = self.t
        t["group"][i] = g["id"]
        t["seed"][i] = cfg.sampling.seed
        t["step"][i] = len(output_ids)  # > 0 when a preempted request resumes
        t["prompt_len"][i] = len(prompt_ids)
        t["limit"][i] = cfg.sampling.max_new_tokens
        t["scoped"][i] = scoped
        v = self.vocab  # a resumed request's scope: its prompt and output so far, as one sequence
        t["in_scope"][i] = not scoped or scope_at_start(list(prompt_ids) + list(output_ids), v.think_start, v.think_end)
        if output_ids:  # a preempted request resumes: its tokens so far, and whether it answered
            n = len(output_ids)
            self._grow(n)
            t["rec_tok"][i, :n] = torch.tensor(output_ids, device=self.device)
            # its soft steps so far (recorded when it left the batch), else none
            rec = self.records.pop(key, None) if key is not None else None
            for name, k in (("rec_soft", "soft"), ("rec_ent", "entropy")):
                t[name][i, :n] = 0
                if rec is not None:
                    m = min(n, len(rec[k]))
                    t[name][i, :m] = torch.tensor(rec[k][:m], dtype=t[name].dtype, device=self.device)
            self._warn_recomputed(key, sum(rec["soft"][:n]) if rec is not None else 0)  # host list: no sync
            if g["guard"] is not None:  # its whole text: the marker may lie before the tail a step checks
                text = self.vocab.tokenizer.decode(list(output_ids), skip_special_tokens=True)
                if any(m in text for m in cfg.sampling.answer_markers):
                    t["in_scope"][i] = False
        penalties.add_row(t, i, cfg.sampling, prompt_ids, output_ids, self.vocab.size)
        t["last_pos"][i] = -2
        self.keys[i] = key
        self.active += 1

    def _warn_recomputed(self, key: Optional[str], soft: int) -> None:
        """A resumed request's earlier soft inputs are gone: vLLM recomputes its prefix from token ids.
        Counted (`recomputed`) and said, so that a user sees which results it touched."""
        if soft:
            self.recomputed += soft
            log.warning(
                "selar: request %s resumed after vLLM preempted it: its %d earlier soft inputs are recomputed "
                "as their emitted tokens, so its continuation is not the method's; give vLLM more KV cache "
                "(VLLM_CPU_KVCACHE_SPACE, gpu_memory_utilization) or fewer concurrent requests (max_num_seqs)",
                key or "(unnamed)",
                soft,
            )

    def move(self, a: int, b: int, swap: bool) -> None:
        if not swap:  # a request moved onto index b replaces (ends) the one there
            self.clear(b)
        for d in self._all():
            for v in d.values():
                if swap:
                    v[[a, b]] = v[[b, a]]
                else:
                    v[b] = v[a]
        if swap:
            self.keys[a], self.keys[b] = self.keys[b], self.keys[a]
        else:  # a one-way move leaves index a empty
            self.keys[b], self.keys[a] = self.keys[a], None
            self.t["group"][a] = -1
            self.t["pend_pos"][a] = -1

    def _grow(self, n: int) -> None:
        w = self.t["rec_soft"].shape[1]
        if n < w:
            return
        new_w = max(2 * w, n + 1)
        for name in ("rec_soft", "rec_ent", "rec_tok"):
            old = self.t[name]
            self.t[name] = torch.zeros(self.cap, new_w, dtype=old.dtype, device=self.device)
            self.t[name][:, :w] = old

    # -- one sampling step (the logits processor) ----------------------------------------------
    @torch.no_grad()
    def apply(self, logits: Tensor, slots: Optional[Tensor] = None, pos: Optional[Tensor] = None) -> Tensor:
        """One sampling step on `logits` (one row per request). `slots[j]`: the state row of logits
        row j (None: row j itself, the V1 runner's persistent batch; Model Runner V2 passes its
        `idx_mapping`); `pos[j]`: the position of row j's last input (None: as `embed` recorded it)."""
        if not self.active:
            self.any_pending = False
            return logits
        b = logits.shape[0]
        t = self.t
        self.dense.reset(t["pend_dense"])
        idx = torch.arange(b, device=self.device) if slots is None else slots.to(self.device, torch.long)
        group = t["group"][idx]
        last = t["last_pos"][idx] if pos is None else pos.to(self.device, torch.long)
        # a row's sample is real when the forward reached the last token of its sequence
        # (partial prefill chunks are sampled too, and discarded by vLLM)
        real = (group >= 0) & (last == t["prompt_len"][idx] + t["step"][idx] - 1)
        # one host transfer a step: the groups present and the longest row
        *present, longest = torch.cat([torch.unique(group), t["step"][idx].max()[None]]).tolist()
        self._grow(longest + 1)
        soft = []
        for gid in present:
            if gid < 0:
                continue
            # the common case, one group holding every row, needs no row search
            sel = torch.arange(b, device=group.device) if present == [gid] else (group == gid).nonzero()[:, 0]
            soft.append(self._step_group(self.by_id[gid], idx[sel], logits, real[sel], sel))
        self.any_pending = bool(torch.cat(soft).any()) if soft else False
        return logits

    def _step_group(self, g: dict, rows: Tensor, logits: Tensor, real: Tensor, lrows: Tensor) -> Tensor:
        """Run one group's method on its state rows `rows` (logits rows `lrows`); returns which of
        them feed a soft input next."""
        t, method, cfg = self.t, g["method"], g["cfg"].sampling
        lg = penalties.penalised(t, rows, logits[lrows], cfg)  # before the method's step (see penalties)
        step = t["step"][rows]
        state = {k: v[rows] for k, v in g["state"].items()}
        ctx = step_context(
            lg,
            cfg,
            method.num_candidates,
            seeds=t["seed"][rows],
            steps=step,
            in_scope=t["in_scope"][rows],
            limit=t["limit"][rows],
        )
        out = method.step(ctx, state)
        if out.stop is not None or out.inputs.latent is not None:
            raise CapabilityError(f"method {method.name!r} needs inputs the vLLM plugin cannot feed")
        for k, v in (out.state or {}).items():  # state advances on real samples only
            keep = real.view(-1, *([1] * (v.dim() - 1)))
            g["state"][k][rows] = torch.where(keep, v, state[k])
        tok = out.tokens
        penalties.count(t, rows, tok, real)
        # force vLLM to emit the method's token
        logits.index_fill_(0, lrows, float("-inf"))
        logits[lrows, tok] = 0.0
        col = step.clamp_max(t["rec_soft"].shape[1] - 1)
        t["rec_tok"][rows, col] = tok
        # the decode layer's scope rules (selar.scope), on real samples only
        scope = t["in_scope"][rows]
        marked = marked_mask(g["guard"], t["rec_tok"], t["step"], tok, real & scope, index=rows)
        out, closed = scope_step(out, scope, self.vocab.think_end, ends_at_think=t["scoped"][rows], marked=marked)
        t["in_scope"][rows] = torch.where(real, closed, scope)
        soft = out.soft & real
        pos = t["prompt_len"][rows] + step
        t["pend_pos"][rows] = torch.where(soft, pos, torch.full_like(pos, -1))
        if out.inputs.dense:  # kept apart (dense.py); the sparse columns below hold the token, unused
            self.dense.put(t["pend_dense"], rows, soft, out.inputs.weights)
            out = replace(out, inputs=Mixture.of_tokens(tok))
        ids = out.inputs.ids
        assert ids is not None  # sparse (checked above)
        m = ids.shape[1]
        t["pend_ids"][rows, :m] = ids
        t["pend_w"][rows, :m] = out.inputs.weights.float()
        if m < t["pend_w"].shape[1]:
            t["pend_w"][rows, m:] = 0.0
        t["rec_soft"][rows, col] = soft
        if out.entropy is not None:
            t["rec_ent"][rows, col] = out.entropy.float()
        t["step"][rows] = step + real.long()
        return soft

    # -- the model side ------------------------------------------------------------------------
    def embed(self, model: Any, input_ids: Tensor, positions: Tensor) -> Tensor:
        """inputs_embeds for this forward: token embeddings, with soft rows replaced."""
        emb = model.embed_input_ids(input_ids)
        # the state row of each request of this forward: Model Runner V2's published slots, or V1's
        # batch order itself
        slots: Optional[Tensor] = None
        if self.v2:
            slots, qsl = self.batch if self.batch is not None else (None, None)
        else:
            qsl = _query_start_loc()
        if qsl is None or not self.active:
            return emb
        n_req = qsl.numel() - 1
        qsl = qsl.to(positions.device)
        idx = torch.arange(n_req, device=positions.device) if slots is None else slots.to(positions.device, torch.long)
        self.t["last_pos"][idx] = positions[qsl[1:] - 1].long()
        if not self.any_pending:
            return emb
        counts = qsl[1:] - qsl[:-1]
        n = int(qsl[-1])
        req = torch.repeat_interleave(idx, counts, output_size=n)  # the state row of every token
        hit = self.t["pend_pos"][req] == positions[:n]
        rows = hit.nonzero()[:, 0]
        if rows.numel():
            r = req[rows]
            ids, w = self.t["pend_ids"][r], self.t["pend_w"][r]
            e = model.embed_input_ids(ids.reshape(-1)).view(*ids.shape, -1).float()
            emb[rows] = (w[..., None] * e).sum(1).to(emb.dtype)
            self.dense.embed(model, emb, rows, self.t["pend_dense"][r])
        return emb


def _query_start_loc() -> Optional[Tensor]:
    from vllm.forward_context import get_forward_context, is_forward_context_available

    if not is_forward_context_available():
        return None
    md = get_forward_context().attn_metadata
    if isinstance(md, list):  # micro-batching (DBO) splits the batch: not supported
        raise RuntimeError("selar's vLLM plugin does not support dual-batch overlap")
    if not md:
        return None
    for m in md.values():
        q = getattr(m, "query_start_loc", None)
        if q is not None:
            return q
    return None


_STATE: Optional[SoftState] = None


def current_state() -> Optional[SoftState]:
    """This process's state (set by the logits processor), or None outside a plugin run."""
    return _STATE


def set_state(state: Optional[SoftState]) -> None:
    global _STATE
    _STATE = state
