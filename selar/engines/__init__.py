"""Engines run the model. `base` holds the contract (Model, Capabilities, Engine), `registry` the
known engines and `load_model`; each engine is a package of its own, imported when used."""

from ..decode import Engine
from .base import Capabilities, Model
from .registry import ENGINES, EngineSpec, get_engine, load_model, load_options, register_engine
from .transformers import TransformersEngine, TransformersModel, wrap

__all__ = [
    "Capabilities",
    "Engine",
    "Model",
    "ENGINES",
    "EngineSpec",
    "get_engine",
    "load_model",
    "load_options",
    "register_engine",
    "TransformersEngine",
    "TransformersModel",
    "wrap",
]
