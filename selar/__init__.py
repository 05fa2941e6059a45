"""selar: selective latent reasoning (SeLaR) and its baselines for open-weight LLMs."""

from .api import Result, format_prompt, generate
from .config import GenerationConfig, SamplingConfig, make_config
from .errors import ChecksumError, ConfigError, ModelLoadError, OfflineError, PromptError, SelarError
from .methods import METHODS, Mixture, register
from .models import Model, load_model, wrap

__version__ = "0.1.0"

__all__ = ["generate", "load_model", "wrap", "make_config", "format_prompt", "Result", "Model",
           "GenerationConfig", "SamplingConfig", "METHODS", "Mixture", "register", "SelarError",
           "ConfigError", "PromptError", "ModelLoadError", "OfflineError", "ChecksumError", "__version__"]
