"""The Hugging Face transformers engine: a left-padded batch over the model's own cache (see
`cache` for the cache kinds it moves rows of, and `family` for the probe that checks a family
before any row is decoded)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from ...methods.base import Mixture
from . import cache as caches
from .family import fit


class TransformersEngine:
    supports_hidden = True  # can keep each row's last hidden state and feed it back (Mixture.latent)

    def __init__(self, model, pad_id: int = 0):
        self.model = model
        self.fit = fit(model)  # raises CapabilityError for a family the engine cannot drive
        self.embed_module = model.get_input_embeddings()
        self.device = self.embed_module.weight.device
        self.dtype = self.embed_module.weight.dtype
        self.pad_id = pad_id
        params = inspect.signature(model.forward).parameters
        self._keep_kw = (
            "logits_to_keep"
            if "logits_to_keep" in params
            else "num_logits_to_keep"
            if "num_logits_to_keep" in params
            else None
        )
        self._cache_position = "cache_position" in params  # some hybrids need it given (as generate does)
        self._table: Tensor | None = None
        self.cache = None
        self.mask: Tensor | None = None
        self.next_pos: Tensor | None = None
        self.vocab_size: int | None = None
        self.keep_hidden = False  # set by the session for methods that need hidden states
        self.hidden: Tensor | None = None  # (B, D) last hidden state of each row, when kept

    # -- embedding of mixtures ------------------------------------------------------------
    def embed(self, ids: Tensor) -> Tensor:
        """Rows of these token ids as the model's own token path makes them: its embedding
        module (which may scale), times the factor the probe found (1 for most families)."""
        rows = self.embed_module(ids)
        return rows if self.fit.embed_scale == 1.0 else rows * self.fit.embed_scale

    def embedding_table(self) -> Tensor:
        """E(v) for every v, as `embed` gives it."""
        if self._table is None:
            if type(self.embed_module) is nn.Embedding and self.fit.embed_scale == 1.0:
                self._table = self.embed_module.weight
            else:
                n = self.embed_module.weight.shape[0]
                with torch.no_grad():
                    self._table = self.embed(torch.arange(n, device=self.device))
        return self._table

    def embed_mixture(self, mix: Mixture) -> Tensor:
        """(B, 1, D) inputs_embeds for a mixture."""
        if mix.dense:
            table = self.embedding_table()
            w = mix.weights[:, : table.shape[0]]
            return (w.to(table.dtype) @ table)[:, None, :].to(self.dtype)
        if mix.ids.shape[1] == 1:
            return self.embed(mix.ids)
        e = self.embed(mix.ids).float()  # (B, M, D)
        return (mix.weights[..., None].float() * e).sum(1, keepdim=True).to(self.dtype)

    # -- forward ----------------------------------------------------------------------------
    def _forward(self, embeds: Tensor, position_ids: Tensor) -> Tensor:
        kw: dict[str, Any] = {self._keep_kw: 1} if self._keep_kw else {}
        if self.keep_hidden:
            kw["output_hidden_states"] = True
        if self._cache_position:  # the columns these inputs take in the batch
            width = self.mask.shape[1]
            kw["cache_position"] = torch.arange(width - embeds.shape[1], width, device=self.device)
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=self.mask,
            position_ids=position_ids,
            past_key_values=self.cache,
            use_cache=True,
            **kw,
        )
        self.cache = out.past_key_values
        if self.keep_hidden:
            self.hidden = out.hidden_states[-1][:, -1, :]
        logits = out.logits[:, -1, :].float()
        if self.vocab_size is None:
            self.vocab_size = logits.shape[-1]
        return logits

    @torch.no_grad()
    def add(self, prompts: list[list[int]]) -> Tensor:
        """Prefill new rows (left-padded) and append them to the batch; their last logits."""
        n = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), n), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, n - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, n - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        old = (self.cache, self.mask, self.next_pos)
        old_hidden = self.hidden
        self.cache, self.mask, self.next_pos = caches.new_cache(self.model, len(prompts)), mask, pos[:, -1] + 1
        logits = self._forward(self.embed(ids), pos)
        if old[0] is not None:  # join the running rows: left-pad the shorter side to one length
            self._join(*old)
            if self.keep_hidden:
                self.hidden = torch.cat([old_hidden, self.hidden])
        return logits

    def _join(self, cache, mask: Tensor, next_pos: Tensor) -> None:
        width = max(mask.shape[1], self.mask.shape[1])
        self.cache = caches.join(cache, self.cache, width)
        self.mask = torch.cat([caches.lpad(mask, width, 1), caches.lpad(self.mask, width, 1)])
        self.next_pos = torch.cat([next_pos, self.next_pos])

    def reset(self) -> None:
        """Drop every row (and the cache)."""
        self.cache = self.mask = self.next_pos = self.hidden = None

    @torch.no_grad()
    def step(self, inputs: Mixture) -> Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        pos = self.next_pos[:, None]
        self.next_pos = self.next_pos + 1
        embeds = self.embed_mixture(inputs)
        if inputs.latent is not None and self.hidden is not None:  # hidden-state inputs
            heads = getattr(self.model, "selar_latent", None)
            h = self.hidden if heads is None else heads.project(self.hidden)
            embeds = torch.where(inputs.latent[:, None, None], h[:, None, :].to(embeds.dtype), embeds)
        return self._forward(embeds, pos)

    def select(self, keep: Tensor) -> None:
        """Keep only these rows, and drop the leading columns that are padding in all of them."""
        self.mask = self.mask[keep]
        self.next_pos = self.next_pos[keep]
        if self.hidden is not None:
            self.hidden = self.hidden[keep]
        start = int(self.mask.argmax(-1).min())  # first column any kept row attends to
        self.mask = self.mask[:, start:]
        caches.select(self.cache, keep, start)
