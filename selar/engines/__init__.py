"""Engines run the model: prefill a batch of prompts, then take one step per call from each
row's next input (a `Mixture` of token embeddings), and drop finished rows.

    class Engine(Protocol):
        vocab_size: int
        def prefill(self, prompts: list[list[int]]) -> Tensor: ...   # (B, V) float32 logits
        def step(self, inputs: Mixture) -> Tensor: ...               # (B, V) float32 logits
        def select(self, keep: Tensor) -> None: ...                  # keep these rows
"""

from .transformers import TransformersEngine

__all__ = ["TransformersEngine"]
