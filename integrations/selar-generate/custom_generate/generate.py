"""selar (selective latent reasoning) as a transformers custom_generate method.

The decoding loop is the `selar` package's: install it first (`pip install selar`). See README.md.
"""

from selar.integrations.hf_generate import generate

__all__ = ["generate"]
