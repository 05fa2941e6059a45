"""The Hugging Face hub, for users with internet: whether it may and can be reached, and one
clear `OfflineError` when it cannot (instead of minutes of retries)."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from .errors import OfflineError


def hub_offline() -> bool:
    """HF_HUB_OFFLINE is set."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the hub (HF_ENDPOINT or huggingface.co)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(what: str, instead: str = "use a catalog model (`selar models list`), a folder or a GGUF file") -> None:
    """Raise OfflineError unless the hub may and can be reached to download `what`."""
    if hub_offline():
        raise OfflineError(
            f"{what} is not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE is set); {instead}"
        )
    if not hub_reachable():
        raise OfflineError(f"cannot reach the Hugging Face hub to download {what} (offline?); {instead}")


def looks_like_path(s: str) -> bool:
    """A name meant as a file or folder (rather than a hub id `org/name`)."""
    return s.startswith((".", "/", "~")) or s.endswith(".gguf") or s.count("/") > 1 or "\\" in s
