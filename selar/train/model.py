"""A latent-reasoning wrapper around any causal LM (seed 003, "Learning When to Stop").

Layout of one sequence:  question <bot> <lat> ... <lat> <eot> answer <eos>

`<bot>` opens latent reasoning. The input at every `<lat>` position is not a token embedding but
the last hidden state of the previous position, optionally through a small learned projection
(`LatentHeads.project`). At `<bot>` and at every `<lat>` a binary head on the last hidden state
decides CONTINUE (one more latent step) or STOP (the next input is `<eot>`, then the answer is
decoded as text). The number of latent steps is the number of `<lat>` positions.

The base model is adapted with LoRA (peft), or trained in full (a model trained from scratch).
`save()` writes an adapter directory; `LatentReasoner.load(dir)` and `selar.load_model(dir)`
read it back.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ModelLoadError
from .heads import CONFIG_FILE, CONTINUE, HEADS_FILE, PROJECTIONS, SPECIAL_TOKENS, STOP, LatentConfig, LatentHeads

__all__ = [
    "CONFIG_FILE",
    "CONTINUE",
    "HEADS_FILE",
    "PROJECTIONS",
    "SPECIAL_TOKENS",
    "STOP",
    "LatentConfig",
    "LatentHeads",
    "LatentReasoner",
    "load_latent_model",
]


def _add_special_tokens(tokenizer) -> tuple[int, int, int]:
    new = [t for t in SPECIAL_TOKENS.values() if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)  # (the special-tokens dict API differs in transformers 5)
    return tuple(tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[k]) for k in ("bot", "lat", "eot"))


class LatentReasoner(nn.Module):
    """`lm` (a transformers causal LM, possibly a peft model) + `heads` + the tokenizer."""

    def __init__(self, lm, tokenizer, heads: LatentHeads, config: LatentConfig):
        super().__init__()
        self.lm, self.heads, self.tokenizer, self.config = lm, heads, tokenizer, config

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_base(
        cls,
        hf_model,
        tokenizer,
        *,
        base: str = "",
        lora: bool = True,
        lora_r: int = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.0,
        target_modules=None,
        projection: str = "mlp",
        max_latent: int = 16,
        seed: int = 0,
    ) -> LatentReasoner:
        """Add the special tokens, resize the embeddings, wrap the model in LoRA (or train it in
        full with lora=False) and create the heads."""
        if max_latent < 1:
            raise ConfigError(f"max_latent must be at least 1, got {max_latent}")
        bot, lat, eot = _add_special_tokens(tokenizer)
        _resize(hf_model, len(tokenizer))
        cfg = LatentConfig(
            base=base,
            lora=lora,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            projection=projection,
            max_latent=max_latent,
        )
        if lora:
            hf_model = _apply_lora(hf_model, cfg, [bot, lat, eot], target_modules)
        torch.manual_seed(seed)
        d = hf_model.get_input_embeddings().weight.shape[1]
        dt = hf_model.get_input_embeddings().weight.dtype
        heads = LatentHeads(d, projection, bot_id=bot, lat_id=lat, eot_id=eot, max_latent=max_latent).to(dt)
        return cls(hf_model, tokenizer, heads.to(hf_model.get_input_embeddings().weight.device), cfg)

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id

    def embed(self, ids: Tensor) -> Tensor:
        return self.lm.get_input_embeddings()(ids)

    # -- the forward pass with hidden-state feedback --------------------------------------
    def _mask(self, mask: Tensor, q: int, dtype: torch.dtype) -> Tensor:
        """The additive (B, 1, q, kv) causal + padding mask of the last q of kv positions, built here:
        transformers builds it with vmap on every call, which costs as much as a tiny model's whole
        forward pass. Models whose layers need masks of their own (sliding windows) get the 2D mask."""
        cfg = getattr(self.lm, "config", None)
        if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
            return mask
        if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or []):
            return mask
        kv = mask.shape[1]
        causal = torch.ones(q, kv, dtype=torch.bool, device=mask.device).tril(kv - q)
        allowed = causal[None] & mask[:, None, :].bool()
        return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )[:, None]

    def _lm(self, embeds, mask, pos, cache, all_layers: bool = False):
        out = self.lm(
            inputs_embeds=embeds,
            attention_mask=self._mask(mask, embeds.shape[1], embeds.dtype),
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            output_hidden_states=True,
        )
        return out.logits, _hidden(out, all_layers), out.past_key_values

    def forward_latent(
        self, input_ids: Tensor, attention_mask: Tensor, latent_mask: Tensor, all_layers: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Logits (B, T, V) and last hidden states (B, T, D) of a batch where the input of every
        position in `latent_mask` is `heads.project` of the previous position's last hidden
        state (differentiable through the chain). Positions before the first latent column are
        one pass, the latent columns one pass each (KV cache), the rest one pass.
        `all_layers`: hidden states (B, T, L, D) of every layer's output instead (the last is the
        one fed back)."""
        from transformers import DynamicCache

        pos = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        cols = latent_mask.any(0).nonzero()[:, 0].tolist()
        T = input_ids.shape[1]
        if not cols:
            mask = self._mask(attention_mask, T, self.embed(input_ids[:, :1]).dtype)
            out = self.lm(input_ids=input_ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
            return out.logits, _hidden(out, all_layers)
        if cols[0] == 0:
            raise ValueError("a latent position needs a previous position")
        spans = [(0, cols[0])] + [(c, c + 1) for c in range(cols[0], cols[-1] + 1)]
        if cols[-1] + 1 < T:
            spans.append((cols[-1] + 1, T))
        cache = DynamicCache()
        logits: list[Tensor] = []
        hidden: list[Tensor] = []
        for a, b in spans:
            e = self.embed(input_ids[:, a:b])
            if b == a + 1 and a in cols:
                lat = latent_mask[:, a]
                last = hidden[-1][:, -1:, -1, :] if all_layers else hidden[-1][:, -1:, :]
                e = torch.where(lat[:, None, None], self.heads.project(last).to(e.dtype), e)
            lg, h, cache = self._lm(e, attention_mask[:, :b], pos[:, a:b], cache, all_layers)
            logits.append(lg)
            hidden.append(h)
        return torch.cat(logits, 1), torch.cat(hidden, 1)

    # -- rollouts -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        greedy: bool = True,
        temperature: float = 1.0,
        stop_temperature: float = 1.0,
        max_latent: Optional[int] = None,
        max_answer_tokens: int = 16,
        generator: Optional[torch.Generator] = None,
        force_latent: Optional[Sequence[int]] = None,
    ) -> list[dict]:
        """Decode each prompt: <bot>, latent steps until the stop head says STOP (or max_latent),
        <eot>, then answer tokens until <eos>. Greedy, or sampled (stop decisions from the stop
        head at `stop_temperature`, tokens from softmax(logits / temperature) over the full
        vocabulary). `force_latent[i]`: exactly that many latent steps for row i (no stop head).
        Per row: latent steps, stop decisions taken (bools, True = STOP; the last one omitted
        when the limit forced it), answer token ids (eos included when produced)."""
        h_ = self.heads
        max_latent = h_.max_latent if max_latent is None else max_latent
        B = len(prompts)
        dev = self.device
        n = max(len(p) + 1 for p in prompts)
        ids = torch.full((B, n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, n), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, n - len(p) - 1 :] = torch.tensor(list(p) + [h_.bot_id])
            mask[i, n - len(p) - 1 :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        from transformers import DynamicCache

        logits, hid, cache = self._lm(self.embed(ids), mask, pos, DynamicCache())
        logits, hid, next_pos = logits[:, -1].float(), hid[:, -1], pos[:, -1] + 1
        phase = torch.zeros(B, dtype=torch.long, device=dev)  # 0 latent, 1 answer, 2 done
        count = torch.zeros(B, dtype=torch.long, device=dev)  # latent steps taken
        n_ans = torch.zeros(B, dtype=torch.long, device=dev)  # answer tokens emitted
        rows = [{"latent_steps": 0, "decisions": [], "answer_ids": [], "forced_stop": False} for _ in range(B)]
        forced: Optional[Tensor] = None if force_latent is None else torch.tensor(list(force_latent), device=dev)
        for _ in range(max_latent + 1 + max_answer_tokens):
            if bool((phase == 2).all()):
                break
            in_latent, in_answer = phase == 0, phase == 1
            limit = count >= max_latent
            if forced is not None:
                stop = count >= forced
            else:
                p_stop = torch.softmax(h_.stop_logits(hid) / stop_temperature, -1)[:, STOP]
                stop = p_stop >= 0.5 if greedy else torch.rand(B, generator=generator).to(dev) < p_stop
            go_on = in_latent & ~stop & ~limit  # feed the hidden state back
            if greedy:
                tok = logits.argmax(-1)
            else:
                tok = torch.multinomial(torch.softmax(logits / temperature, -1).cpu(), 1, generator=generator)[:, 0].to(
                    dev
                )
            for i in torch.nonzero(in_latent | in_answer)[:, 0].tolist():
                if bool(in_latent[i]):
                    if forced is None and not bool(limit[i]):
                        rows[i]["decisions"].append(not bool(go_on[i]))
                    rows[i]["forced_stop"] = forced is None and bool(limit[i])
                else:
                    rows[i]["answer_ids"].append(int(tok[i]))
            n_ans = n_ans + in_answer.long()
            count = count + go_on.long()
            ended = in_answer & ((tok == self.eos_id) | (n_ans >= max_answer_tokens))
            phase = torch.where(in_latent & ~go_on, 1, torch.where(ended, 2, phase))
            inp = torch.where(in_latent, torch.where(go_on, h_.lat_id, h_.eot_id), tok)
            e = self.embed(inp[:, None])
            e = torch.where(go_on[:, None, None], h_.project(hid[:, None, :]).to(e.dtype), e)
            mask = torch.cat([mask, mask.new_ones(B, 1)], 1)
            logits, hid, cache = self._lm(e, mask, next_pos[:, None], cache)
            logits, hid, next_pos = logits[:, -1].float(), hid[:, -1], next_pos + 1
        for i in range(B):
            rows[i]["latent_steps"] = int(count[i])
        return rows

    def answer_text(self, answer_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(answer_ids), skip_special_tokens=True)

    # -- saving ----------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        """An adapter directory: selar_latent.json, latent_heads.safetensors, the tokenizer (with
        the special tokens and without a chat template: prompts are raw text), and the LoRA
        adapter (peft format) or, for a model trained in full, the model in base/."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.config.lora:
            self.lm.save_pretrained(str(out))
        else:
            self.lm.save_pretrained(str(out / "base"))
        tok = copy.copy(self.tokenizer)
        tok.chat_template = None
        tok.save_pretrained(str(out))
        h = self.heads
        meta = asdict(self.config)
        meta.update(bot_id=h.bot_id, lat_id=h.lat_id, eot_id=h.eot_id, max_latent=h.max_latent)
        (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in h.state_dict().items()}, str(out / HEADS_FILE))
        return out

    @classmethod
    def load(
        cls, path: str | Path, *, trainable: bool = False, dtype=torch.float32, device: str = "cpu"
    ) -> LatentReasoner:
        """Read an adapter directory written by `save` (the base model of a LoRA adapter is
        resolved like selar.load_model: catalog name, folder or hub id)."""
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        p = Path(path)
        if not (p / CONFIG_FILE).is_file():
            raise ModelLoadError(f"{p} is not a latent-reasoning adapter directory (no {CONFIG_FILE})")
        meta = json.loads((p / CONFIG_FILE).read_text())
        fields = {f for f in LatentConfig.__dataclass_fields__}
        cfg = LatentConfig(**{k: v for k, v in meta.items() if k in fields})
        tok = AutoTokenizer.from_pretrained(str(p))
        lm: Any
        if cfg.lora:
            from peft import PeftModel

            from ..engines import load_model

            base = load_model(cfg.base, dtype=dtype, device=device).hf_model
            _resize(base, len(tok))
            lm = PeftModel.from_pretrained(base, str(p), is_trainable=trainable)
        else:
            lm = AutoModelForCausalLM.from_pretrained(str(p / "base"), dtype=dtype)
            lm = lm.to(device)
        d = lm.get_input_embeddings().weight.shape[1]
        heads = LatentHeads(
            d,
            cfg.projection,
            bot_id=meta["bot_id"],
            lat_id=meta["lat_id"],
            eot_id=meta["eot_id"],
            max_latent=meta["max_latent"],
        )
        heads.load_state_dict(load_file(str(p / HEADS_FILE)))
        heads.to(device=device, dtype=lm.get_input_embeddings().weight.dtype)
        model = cls(lm, tok, heads, cfg)
        model.train(trainable)
        if not trainable:
            model.requires_grad_(False)
        return model

    def to_selar_model(self, merge: bool = True, name: str = "latent"):
        """A `selar.Model` for the core decode path (method="adaptive-latent"): the LoRA merged
        into the base weights, the heads attached as `hf_model.selar_latent`."""
        from ..engines import wrap

        lm = self.lm
        if self.config.lora and merge:
            lm = lm.merge_and_unload()
        lm.selar_latent = self.heads
        lm.eval()
        tok = copy.copy(self.tokenizer)
        tok.chat_template = None
        return wrap(lm, tok, name=name)


def _hidden(out, all_layers: bool) -> Tensor:
    """The last hidden state (B, T, D), or every layer's output (B, T, L, D) (not the embeddings)."""
    if all_layers:
        return torch.stack(out.hidden_states[1:], 2)
    return out.hidden_states[-1]


def _resize(hf_model, n: int) -> None:
    """Room for the special tokens. Their input embeddings are trained (and saved with a LoRA
    adapter); their output rows of an untied head are zero, the same at training and at loading
    (the stop head, not the LM head, decides when latent reasoning ends)."""
    old = hf_model.get_input_embeddings().weight.shape[0]
    if old >= n:
        return
    hf_model.resize_token_embeddings(n, mean_resizing=False)
    out = hf_model.get_output_embeddings()
    with torch.no_grad():
        if out is not None and out.weight.data_ptr() != hf_model.get_input_embeddings().weight.data_ptr():
            out.weight[old:].zero_()
            if getattr(out, "bias", None) is not None:
                out.bias[old:].zero_()
        emb = hf_model.get_input_embeddings().weight
        emb[old:] = emb[:old].mean(0, keepdim=True) + 0.02 * emb[:old].std() * torch.randn_like(emb[old:])


def _apply_lora(hf_model, cfg: LatentConfig, new_ids: list[int], target_modules=None):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("LoRA needs peft: pip install 'selar[train]'") from None
    lc = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target_modules or "all-linear",
        task_type="CAUSAL_LM",
        trainable_token_indices={"embed_tokens": list(new_ids)},
    )
    return get_peft_model(hf_model, lc)


def load_latent_model(path: str | Path, dtype=torch.float32, device: str = "cpu"):
    """selar.load_model on an adapter directory: the merged model as a selar.Model."""
    return LatentReasoner.load(path, dtype=dtype, device=device).to_selar_model(name=str(path))
