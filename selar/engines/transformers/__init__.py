"""The Hugging Face transformers engine: a left-padded batch over the model's own cache."""

from .engine import TransformersEngine
from .model import ENTRY, TransformersModel, from_pretrained, load, wrap

__all__ = ["TransformersEngine", "TransformersModel", "ENTRY", "from_pretrained", "load", "wrap"]
