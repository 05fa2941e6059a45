"""Loading a model: a catalog name, a local folder, a GGUF file or a hub id, in that order."""

from __future__ import annotations

import inspect
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .config import env_json
from .errors import ConfigError, ModelLoadError, OfflineError
from .methods.base import VocabInfo

DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
          "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
THINK_TOKENS = ("<think>", "</think>")


def cpu_supports_bf16() -> bool:
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover
        return False
    if "AVX512" not in cap:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    if DTYPES[dtype] is not None:
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


@dataclass
class Model:
    """A loaded model with its tokenizer and what the decoder needs to know of it."""

    hf_model: object
    tokenizer: object
    name: str
    source: str  # "catalog", "folder", "gguf", "hub" or "object"
    load_seconds: float = 0.0
    info: dict = field(default_factory=dict)
    engine: str = "transformers"

    def __post_init__(self) -> None:
        tok = self.tokenizer
        vocab = tok.get_vocab()
        self.think_start, self.think_end = (vocab.get(t) for t in THINK_TOKENS)
        if self.engine != "transformers":  # another engine's subclass fills in the rest
            return
        emb = self.hf_model.get_input_embeddings()
        self.vocab_size = int(emb.weight.shape[0])
        cfg = getattr(self.hf_model, "generation_config", None)
        eos = getattr(cfg, "eos_token_id", None)
        if eos is None:
            eos = tok.eos_token_id
        ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.stop_ids = sorted({int(i) for i in ids if i is not None})
        mc = self.hf_model.config
        self.max_positions = getattr(mc, "max_position_embeddings", None)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (self.stop_ids or [0])[0]

    @property
    def is_thinking(self) -> bool:
        return self.think_end is not None

    @property
    def device(self) -> torch.device:
        return self.hf_model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf_model.get_input_embeddings().weight.dtype

    def make_engine(self):
        """A new engine over this model (one per decode session)."""
        from .engines.transformers import TransformersEngine

        return TransformersEngine(self.hf_model, pad_id=self.pad_id)

    def require_transformers(self, what: str) -> None:
        if self.engine != "transformers":
            raise ConfigError(f"{what} needs the transformers engine (this model runs on {self.engine})")

    def vocab_info(self) -> VocabInfo:
        return VocabInfo(size=self.vocab_size, think_start=self.think_start, think_end=self.think_end,
                         tokenizer=self.tokenizer, latent=getattr(self.hf_model, "selar_latent", None))


def _looks_like_path(s: str) -> bool:
    return s.startswith((".", "/", "~")) or s.endswith(".gguf") or s.count("/") > 1 or "\\" in s


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the hub (HF_ENDPOINT or huggingface.co), instead of minutes of retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _from_pretrained(path: str, dtype: torch.dtype, device: torch.device, trust_remote_code: bool,
                     gguf_file: Optional[str] = None, local_only: bool = True):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = dict(trust_remote_code=trust_remote_code, local_files_only=local_only)
    if gguf_file:
        kw["gguf_file"] = gguf_file
    tok = AutoTokenizer.from_pretrained(path, **kw)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
    model.to(device).eval()
    return model, tok


ENGINES = ("transformers", "llamacpp", "vllm")


def engine_options(engine: str, rows: int, positions: int) -> dict:
    """Load options of an engine sized for a job of `rows` sequences of at most `positions`
    positions (prompt + generation): llama.cpp allocates its KV cache for them up front."""
    if engine == "llamacpp":
        return {"max_rows": max(1, rows), "context": max(4096, positions)}
    if engine == "vllm":
        return {"max_num_seqs": max(1, rows), "max_model_len": positions}
    return {}


def load_model(name_or_path: str, dtype="auto", device: str = "auto", trust_remote_code: bool = False,
               engine: str = "transformers", **engine_options) -> Model:
    """Load a causal LM. Resolution order: catalog name (pulled on first use), local folder,
    GGUF file, hub id. dtype "auto": bf16 on GPUs and on CPUs with bf16 support, else float32.
    `engine="llamacpp"` runs a GGUF file or catalog model on llama.cpp (`pip install selar[llamacpp]`);
    `engine="vllm"` runs a catalog model, folder or hub id on vLLM (`pip install selar[vllm]`)."""
    from . import catalog

    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ConfigError("the model must be a catalog name, a folder, a GGUF file or a hub id")
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; known engines: {', '.join(ENGINES)}")
    if engine == "llamacpp":
        from .engines.llamacpp import load_llamacpp

        if str(dtype).replace("torch.", "") not in ("auto", "None") or device not in ("auto", "cpu"):
            raise ConfigError("dtype and device apply to the transformers engine; llama.cpp runs the GGUF's own "
                              "quantisation on the CPU")
        extra = env_json("SELAR_LLAMACPP_ARGS")  # e.g. '{"kv_type": "f32", "threads": 4}' for CLI runs
        known = set(inspect.signature(load_llamacpp).parameters) - {"name_or_path"}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ConfigError(f"SELAR_LLAMACPP_ARGS: unknown option(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        return load_llamacpp(name_or_path, **{**extra, **engine_options})
    if engine == "vllm":
        from .engines.vllm import load_vllm

        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError("vLLM places the model itself; give device auto (tensor_parallel_size=N for GPUs)")
        return load_vllm(name_or_path, dtype=str(dtype).replace("torch.", ""), **engine_options)
    if engine_options:
        raise ConfigError(f"the transformers engine takes no options {sorted(engine_options)}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    t0 = time.perf_counter()
    name = name_or_path
    path = Path(os.path.expanduser(name))
    try:
        if name in catalog.CATALOG:
            entry = catalog.CATALOG[name]
            if not catalog.is_pulled(entry):
                print(f"selar: {name} is not pulled yet; pulling it now (once)", flush=True)
            folder = catalog.pull(name)
            model, tok = _from_pretrained(str(folder), dt, dev, trust_remote_code)
            source = "catalog"
        elif path.is_dir() and (path / "selar_latent.json").is_file():  # a `selar train` adapter
            from .train.model import load_latent_model
            return load_latent_model(path, dtype=dt, device=str(dev))
        elif path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"{path} has no config.json, so it is not a transformers model folder")
            model, tok = _from_pretrained(str(path), dt, dev, trust_remote_code)
            source = "folder"
        elif path.is_file():
            if path.suffix != ".gguf":
                raise ModelLoadError(f"{path} is a file but not a .gguf file; give a GGUF file or a model folder")
            model, tok = _from_pretrained(str(path.parent), dt, dev, trust_remote_code, gguf_file=path.name)
            source = "gguf"
        elif _looks_like_path(name):
            raise ModelLoadError(f"no such model file or folder: {name}")
        else:
            model, tok = _load_hub(name, dt, dev, trust_remote_code)
            source = "hub"
    except (ModelLoadError, ConfigError):
        raise
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load {name}: {msg}") from e
    return Model(model, tok, name=name, source=source, load_seconds=time.perf_counter() - t0)


def _load_hub(name: str, dt, dev, trust_remote_code: bool):
    if name.count("/") != 1:
        from . import catalog
        raise ModelLoadError(f"{name!r} is not a catalog model ({', '.join(catalog.CATALOG)}), "
                             f"a folder, a GGUF file or a hub id of the form org/name")
    try:  # a model already in the local hub cache works offline
        return _from_pretrained(name, dt, dev, trust_remote_code, local_only=True)
    except OSError:
        pass
    if _hub_offline():
        raise OfflineError(f"{name} is not in the local Hugging Face cache and the hub is offline "
                           f"(HF_HUB_OFFLINE is set); use a catalog model, a folder or a GGUF file")
    if not _hub_reachable():
        raise OfflineError(f"cannot reach the Hugging Face hub to download {name} (offline?); "
                           f"use a catalog model (`selar models list`), a folder or a GGUF file")
    try:
        return _from_pretrained(name, dt, dev, trust_remote_code, local_only=False)
    except OSError as e:
        text = str(e)
        if any(s in text for s in ("connect", "Connection", "resolve", "offline", "Max retries", "timed out")):
            raise OfflineError(f"cannot reach the Hugging Face hub to download {name}; "
                               f"use a catalog model (`selar models list`), a folder or a GGUF file") from None
        raise ModelLoadError(f"could not load {name} from the hub: {text.strip().splitlines()[0]}") from None


def wrap(hf_model, tokenizer, name: str = "model") -> Model:
    """Use an already loaded transformers model and tokenizer."""
    return Model(hf_model, tokenizer, name=name, source="object")
