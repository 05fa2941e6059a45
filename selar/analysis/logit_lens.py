"""Logit lens at soft steps: decode every layer's hidden state through the model's final norm
and output head, and measure how strongly it points at the top-1 and the top-2 candidate of
the soft input, with the contrastive push on and off."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..api import format_prompt
from ..decode import decode
from ..engines.transformers import TransformersEngine
from ..methods import get_method_spec, make_config


def final_norm(hf_model):
    """The norm applied before the output head (model.model.norm for Llama/Qwen/Mistral...)."""
    base = getattr(hf_model, hf_model.base_model_prefix, None) or hf_model.model
    for name in ("norm", "final_layernorm", "ln_f"):
        if hasattr(base, name):
            return getattr(base, name)
    raise ValueError(f"cannot find the final norm of {type(hf_model).__name__}")


@torch.no_grad()
def layer_probs(hf_model, hidden_states: tuple) -> torch.Tensor:
    """(L+1, B, V) float32 distributions: softmax(head(norm(h_l))) of the last position, for the
    embedding output and every layer. Hugging Face's last entry is already normalised."""
    norm, head = final_norm(hf_model), hf_model.get_output_embeddings()
    out = []
    for i, h in enumerate(hidden_states):
        x = h[:, -1, :]
        if i < len(hidden_states) - 1:
            x = norm(x)
        out.append(torch.softmax(head(x).float(), dim=-1))
    return torch.stack(out)


class LensEngine(TransformersEngine):
    """Records, at every step whose input was soft in some row, the per-layer probability of
    that row's top-1 and top-2 mixture candidates and whether they are in the layer's top-k."""

    def __init__(self, model, pad_id: int = 0, topk: int = 5):
        super().__init__(model, pad_id)
        self.topk = topk
        self.records: list[dict] = []
        self._pending = None

    def _forward(self, embeds, position_ids):
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=self.mask,
            position_ids=position_ids,
            past_key_values=self.cache,
            use_cache=True,
            output_hidden_states=self._pending is not None,
            **({self._keep_kw: 1} if self._keep_kw else {}),
        )
        self.cache = out.past_key_values
        if self._pending is not None:
            rows, top1, top2 = self._pending
            probs = layer_probs(self.model, tuple(h[rows] for h in out.hidden_states))  # (L+1, n, V)
            ranks = probs.topk(self.topk, dim=-1).indices
            for j in range(len(rows)):
                self.records.append(
                    {
                        "p_top1": probs[:, j, top1[j]].tolist(),
                        "p_top2": probs[:, j, top2[j]].tolist(),
                        "in_topk_top1": (ranks[:, j] == top1[j]).any(-1).tolist(),
                        "in_topk_top2": (ranks[:, j] == top2[j]).any(-1).tolist(),
                    }
                )
            self._pending = None
        logits = out.logits[:, -1, :].float()
        self.vocab_size = self.vocab_size or logits.shape[-1]
        return logits

    def step(self, inputs):
        if not inputs.dense and inputs.ids.shape[1] >= 2:
            soft = (inputs.weights[:, 1:] != 0).any(-1)
            rows = soft.nonzero()[:, 0]
            if rows.numel():
                self._pending = (rows, inputs.ids[rows, 0].tolist(), inputs.ids[rows, 1].tolist())
        return super().step(inputs)


def collect(model, prompts: list[str], push_weight: float, batch_size: int = 8, **options) -> list[dict]:
    """Lens records of every soft step of SeLaR with the given push weight."""
    model.require("logit_lens", "the logit lens")

    cfg = make_config("selar", push_weight=push_weight, **options)
    records = []
    for b in range(0, len(prompts), batch_size):
        chunk = prompts[b : b + batch_size]
        engine = LensEngine(model.hf_model, pad_id=model.pad_id)
        meth = get_method_spec("selar").factory(cfg.options, model.vocab_info())
        scope = cfg.sampling.soft_scope
        decode(
            engine,
            [format_prompt(model, p) for p in chunk],
            meth,
            cfg.sampling,
            seeds=[cfg.sampling.seed] * len(chunk),
            stop_ids=model.stop_ids,
            think_end=model.think_end,
            reasoning_scope=(scope == "reasoning") or (scope == "auto" and model.is_thinking),
            max_positions=model.max_positions,
        )
        records += engine.records
    return records


def summarize(records: list[dict]) -> dict:
    if not records:
        return {"soft_steps": 0}
    keys = ("p_top1", "p_top2", "in_topk_top1", "in_topk_top2")
    t = {k: torch.tensor([r[k] for r in records], dtype=torch.float64) for k in keys}
    return {"soft_steps": len(records), **{k: t[k].mean(0).tolist() for k in keys}}


def plot(on: dict, off: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for ax, (key1, key2, ylabel) in zip(
        axes,
        (
            ("p_top1", "p_top2", "probability of the candidate"),
            ("in_topk_top1", "in_topk_top2", "candidate in the layer's top-5 (share)"),
        ),
    ):
        for summ, name, ls in ((off, "push off (lambda=0)", "--"), (on, "push on", "-")):
            if not summ.get("soft_steps"):
                continue
            layers = range(len(summ[key1]))
            ax.plot(layers, summ[key1], ls, color="C0", label=f"top-1, {name}")
            ax.plot(layers, summ[key2], ls, color="C1", label=f"top-2, {name}")
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"logit lens at soft steps (push on: {on.get('soft_steps', 0)} steps, off: {off.get('soft_steps', 0)})"
    )
    fig.tight_layout()
    path = out / "logit_lens.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(model, prompts: list[str], out_dir: str, push_weight: float = 1.0, batch_size: int = 8, **options) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    on = summarize(collect(model, prompts, push_weight, batch_size, **options))
    off = summarize(collect(model, prompts, 0.0, batch_size, **options))
    (out / "logit_lens.json").write_text(json.dumps({"push_on": on, "push_off": off}, indent=1))
    return {"push_on": on, "push_off": off, "plot": str(plot(on, off, out))}
