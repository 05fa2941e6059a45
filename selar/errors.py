"""Typed exceptions. The CLI turns each into one sentence and a non-zero exit."""


class SelarError(Exception):
    """Base class of every error selar raises on purpose."""


class ConfigError(SelarError, ValueError):
    """An option is out of range or unknown; the message says what is allowed."""


class CapabilityError(ConfigError):
    """A method needs something the engine cannot do (an input kind, streaming, the logit lens)."""


class PromptError(SelarError, ValueError):
    """A prompt is empty or does not fit in the model's context."""


class CapacityError(SelarError, RuntimeError):
    """A runtime capacity limit was reached (rows, KV slots, context): retry later or load the model
    with more room. Not a configuration mistake, so servers answer it with 503/507, not 400."""


class ModelLoadError(SelarError):
    """A model could not be found, assembled, verified or loaded."""


class OfflineError(ModelLoadError):
    """A hub id was asked for while the hub cannot be reached."""


class ChecksumError(ModelLoadError):
    """An assembled weight file does not match its catalog checksum."""
