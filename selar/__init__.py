"""selar: selective latent reasoning (SeLaR) and its baselines for open-weight LLMs."""

from .api import Result, format_prompt, generate
from .config import GenerationConfig, SamplingConfig
from .engines import Model, load_model
from .engines.transformers import wrap
from .errors import (
    CapabilityError,
    CapacityError,
    ChecksumError,
    ConfigError,
    ModelLoadError,
    OfflineError,
    PromptError,
    SelarError,
)
from .methods import METHODS, Mixture, make_config, register

__version__ = "0.1.0"

__all__ = [
    "generate",
    "load_model",
    "wrap",
    "make_config",
    "format_prompt",
    "Result",
    "Model",
    "GenerationConfig",
    "SamplingConfig",
    "METHODS",
    "Mixture",
    "register",
    "SelarError",
    "ConfigError",
    "CapabilityError",
    "CapacityError",
    "PromptError",
    "ModelLoadError",
    "OfflineError",
    "ChecksumError",
    "__version__",
]
