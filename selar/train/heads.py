"""The parts of a latent reasoner besides the language model: the projection that turns a last
hidden state into the next input, the CONTINUE/STOP head, and the saved configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError

SPECIAL_TOKENS = {"bot": "<bot>", "lat": "<lat>", "eot": "<eot>"}
CONFIG_FILE = "selar_latent.json"
HEADS_FILE = "latent_heads.safetensors"
CONTINUE, STOP = 0, 1
PROJECTIONS = ("none", "linear", "mlp")


class LatentHeads(nn.Module):
    """The projection between latent steps and the CONTINUE/STOP head.

    `projection`: "none" (the hidden state itself), "linear" (initialised to the identity) or
    "mlp" (h + W2 gelu(W1 h), W2 initialised to zero: also the identity at first)."""

    def __init__(self, d: int, projection: str = "mlp", *, bot_id: int, lat_id: int, eot_id: int, max_latent: int = 16):
        super().__init__()
        if projection not in PROJECTIONS:
            raise ConfigError(f"projection must be one of {', '.join(PROJECTIONS)}, got {projection!r}")
        self.projection, self.max_latent = projection, max_latent
        self.bot_id, self.lat_id, self.eot_id = bot_id, lat_id, eot_id
        self.proj: Optional[nn.Module] = None
        if projection == "linear":
            self.proj = nn.Linear(d, d)
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(d))
                self.proj.bias.zero_()
        elif projection == "mlp":
            out = nn.Linear(d, d)
            with torch.no_grad():
                out.weight.zero_()
                out.bias.zero_()
            self.proj = nn.Sequential(nn.Linear(d, d), nn.GELU(), out)
        self.stop_head = nn.Linear(d, 2)

    def project(self, h: Tensor) -> Tensor:
        """Next input embedding from a last hidden state."""
        if self.proj is None:
            return h
        return h + self.proj(h) if self.projection == "mlp" else self.proj(h)

    def stop_logits(self, h: Tensor) -> Tensor:
        """(..., 2) float32 logits of CONTINUE / STOP."""
        return self.stop_head(h).float()

    def stop_prob(self, h: Tensor) -> Tensor:
        return torch.softmax(self.stop_logits(h), -1)[..., STOP]


@dataclass
class LatentConfig:
    base: str = ""  # catalog name, folder or hub id of the base model ("" = saved in base/)
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    projection: str = "mlp"
    max_latent: int = 16
    special_tokens: dict = field(default_factory=lambda: dict(SPECIAL_TOKENS))
    format: int = 1
