"""Engines run the model: prefill rows (which may join a running batch), then take one step per
call from each row's next input (a `Mixture` of token embeddings), and drop finished rows.

    class Engine(Protocol):
        vocab_size: int
        def add(self, prompts: list[list[int]]) -> Tensor: ...  # prefill rows, append them; their logits
        def step(self, inputs: Mixture) -> Tensor: ...          # (B, V) float32 logits of all rows
        def select(self, keep: Tensor) -> None: ...             # keep these rows
        def reset(self) -> None: ...                            # drop every row
"""

from .transformers import TransformersEngine

__all__ = ["TransformersEngine"]
