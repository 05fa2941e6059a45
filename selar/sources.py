"""What a model name refers to, resolved once for every engine: a catalog name, a folder (a
transformers model, or a kind registered here such as a `selar train` adapter), a GGUF file or a
hub id, in that order. Engines take the kinds they run and refuse the others by name."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from . import catalog, hub
from .errors import ModelLoadError

Kind = Literal["catalog", "folder", "gguf", "hub"]


@dataclass(frozen=True)
class Source:
    name: str  # as the user gave it
    kind: Kind
    path: Optional[Path]  # the folder or file (None for hub ids and catalog models not pulled yet)
    loader: Optional[str] = None  # "module:function" of a registered folder kind, else None


# folder kinds: a marker file -> the loader ("module:function(path, dtype=, device=)") of such
# folders; imported only when such a folder is loaded, so no layer imports the one above it
FOLDER_LOADERS: dict[str, str] = {}


def register_folder_loader(marker: str, loader: str, *, replace: bool = False) -> None:
    """Folders holding `marker` are loaded by `loader` ("module:function") instead of transformers."""
    if marker in FOLDER_LOADERS and not replace and FOLDER_LOADERS[marker] != loader:
        raise ValueError(f"folders marked {marker!r} already load with {FOLDER_LOADERS[marker]}")
    FOLDER_LOADERS[marker] = loader


register_folder_loader("selar_latent.json", "selar.train.model:load_latent_model")  # `selar train` adapters


def import_string(ref: str) -> Callable:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def resolve(name: str) -> Source:
    """The source a model name refers to; ModelLoadError with the reason when it is none."""
    if name in catalog.CATALOG:
        return Source(name, "catalog", None)
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        for marker, loader in FOLDER_LOADERS.items():
            if (path / marker).is_file():
                return Source(name, "folder", path, loader)
        return Source(name, "folder", path)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf file; give a GGUF file or a model folder")
        return Source(name, "gguf", path)
    if hub.looks_like_path(name):
        raise ModelLoadError(f"no such model file or folder: {name}")
    if name.count("/") != 1:
        raise ModelLoadError(
            f"{name!r} is not a catalog model ({', '.join(catalog.CATALOG)}), "
            f"a folder, a GGUF file or a hub id of the form org/name"
        )
    return Source(name, "hub", None)
