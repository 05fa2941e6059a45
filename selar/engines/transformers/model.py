"""Models on the transformers engine: loading (catalog, folder, GGUF file, hub id) and wrapping
an already loaded model."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch

from ... import catalog, hub
from ...config import GenerationConfig
from ...decode import RowOutput, new_session
from ...devices import resolve_device, resolve_dtype
from ...errors import CapabilityError, ConfigError, ModelLoadError, OfflineError
from ...sources import import_string, resolve
from ..base import Model, get_engine
from .engine import TransformersEngine

COMPILE_MODES = ("auto", "on", "off")
# compile="auto" compiles the decode step once the model's decode work (rows x new tokens, declared
# by `run` or `expect_work`) reaches this: a compilation costs minutes on a small CPU, about what
# eager decoding loses over this many tokens
AUTO_WORK = 16384


def check_compile(value: Any) -> str:
    if value not in COMPILE_MODES:
        raise ConfigError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {value!r}")
    return str(value)


class TransformersModel(Model):
    """A transformers causal LM (`hf_model`) and its tokenizer."""

    engine = "transformers"

    def __init__(
        self,
        hf_model: Any,
        tokenizer: Any,
        name: str,
        source: str,
        load_seconds: float = 0.0,
        info: Optional[dict] = None,
        compile: str = "auto",
    ):
        self.capabilities = get_engine("transformers").capabilities
        self.hf_model = hf_model
        self.compile = check_compile(compile)  # the compiled static-cache engine: auto, on or off
        self.work = 0.0  # decode work declared so far (rows x new tokens), for compile="auto"
        cfg = getattr(hf_model, "generation_config", None)
        eos = getattr(cfg, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        stop = [eos] if isinstance(eos, int) else list(eos or [])
        super().__init__(
            tokenizer,
            name=name,
            source=source,
            vocab_size=int(hf_model.get_input_embeddings().weight.shape[0]),
            stop_ids=stop,
            max_positions=getattr(hf_model.config, "max_position_embeddings", None),
            load_seconds=load_seconds,
            info=info,
        )

    @property
    def device(self) -> torch.device:
        return self.hf_model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf_model.get_input_embeddings().weight.dtype

    def latent_heads(self) -> Any:
        return getattr(self.hf_model, "selar_latent", None)

    def make_engine(self) -> TransformersEngine:
        """The compiled static-cache engine (`static`) when `compile` asks for it and the family
        allows it, else the eager engine (also once the compiled step gave wrong logits, whatever
        `compile` says: see `slots.Step._verify`)."""
        from . import slots, static

        mode = check_compile(self.compile)
        step = slots.compiled(self.hf_model)
        if (
            mode == "off"
            or (step is not None and step.mismatch)
            or (mode == "auto" and self.work < AUTO_WORK and step is None)
        ):
            return TransformersEngine(self.hf_model, pad_id=self.pad_id)
        why = static.support(self.hf_model)
        if why is None:
            return static.StaticEngine(self.hf_model, pad_id=self.pad_id, strict=mode == "on")
        if mode == "on":
            raise CapabilityError(
                f"compile=on: {why}, so the compiled static-cache engine cannot run it; "
                f"use compile=auto or off (the eager engine)"
            )
        return TransformersEngine(self.hf_model, pad_id=self.pad_id)

    def expect_work(self, tokens: float) -> None:
        """Declare decode work to come (rows x new tokens; float("inf") for a server): under
        compile="auto", sessions made after the total reaches AUTO_WORK run compiled."""
        self.work += max(0.0, float(tokens))

    @property
    def compile_seconds(self) -> float:
        """Time spent compiling this model's decode step so far (apart from decode time)."""
        from . import slots

        step = slots.compiled(self.hf_model)
        return 0.0 if step is None else step.compile_seconds

    def warm_up(self, max_rows: int = 2) -> float:
        """Compile the decode step now, if this model decodes compiled (e.g. a server before its
        first request): the graphs a server runs, under `torch.inference_mode` as it decodes, one for
        a single row and, when `max_rows` > 1, one for every bucket of several rows (two-token runs).
        Returns the seconds spent compiling so far."""
        from ...methods import make_config
        from .static import StaticEngine

        cfg = make_config("cot", temperature=0, max_new_tokens=2, ignore_eos=True)
        for rows in (1, 2) if max_rows > 1 else (1,):
            session = new_session(self, cfg)
            if not isinstance(session.engine, StaticEngine):
                break
            with torch.inference_mode():
                session.add([[self.pad_id]] * rows, list(range(rows)), [0] * rows)
                while session.size:
                    session.step()
        return self.compile_seconds

    def run(
        self,
        prompts: Sequence[Sequence[int]],
        cfg: GenerationConfig,
        seeds: Sequence[int],
        *,
        batch_size: int = 16,
        on_step: Optional[Callable[[list[int], list[int], list[bool]], None]] = None,
    ) -> list[RowOutput]:
        self.expect_work(len(prompts) * cfg.sampling.max_new_tokens)
        return super().run(prompts, cfg, seeds, batch_size=batch_size, on_step=on_step)


def from_pretrained(
    path: str,
    dtype: torch.dtype,
    device: torch.device,
    trust_remote_code: bool,
    gguf_file: Optional[str] = None,
    local_only: bool = True,
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = dict(trust_remote_code=trust_remote_code, local_files_only=local_only)
    if gguf_file:
        kw["gguf_file"] = gguf_file
    tok = AutoTokenizer.from_pretrained(path, **kw)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
    except ValueError:  # a multimodal wrapper AutoModelForCausalLM does not take: its text decoder
        from transformers import AutoConfig

        from . import multimodal

        config = AutoConfig.from_pretrained(path, **kw)
        if gguf_file or not multimodal.is_wrapper(config):
            raise
        model = multimodal.text_decoder(path, config, dtype, local_only)
    model.to(device).eval()  # type: ignore[arg-type]
    return model, tok


def load(
    name: str,
    *,
    dtype: Any = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    compile: str = "auto",
    **options: Any,
) -> Model:
    """Load a catalog model, folder, GGUF file or hub id with transformers. `compile`: "on" decodes
    with the compiled static-cache engine, "off" with the eager one, "auto" compiles once the work
    declared pays for it (see TransformersModel.make_engine)."""
    check_compile(compile)
    if options:
        raise ConfigError(f"the transformers engine takes no options {sorted(options)}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    t0 = time.perf_counter()
    src = resolve(name)
    if src.loader is not None:  # a registered folder kind, e.g. a `selar train` adapter
        loaded: Model = import_string(src.loader)(src.path, dtype=dt, device=str(dev))
        if isinstance(loaded, TransformersModel):
            loaded.compile = compile
        return loaded
    try:
        if src.kind == "catalog":
            if not catalog.is_pulled(catalog.CATALOG[name]):
                print(f"selar: {name} is not pulled yet; pulling it now (once)", flush=True)
            model, tok = from_pretrained(str(catalog.pull(name)), dt, dev, trust_remote_code)
        elif src.kind == "folder":
            assert src.path is not None
            if not (src.path / "config.json").is_file():
                raise ModelLoadError(f"{src.path} has no config.json, so it is not a transformers model folder")
            model, tok = from_pretrained(str(src.path), dt, dev, trust_remote_code)
        elif src.kind == "gguf":
            assert src.path is not None
            model, tok = from_pretrained(str(src.path.parent), dt, dev, trust_remote_code, gguf_file=src.path.name)
        else:
            model, tok = _load_hub(name, dt, dev, trust_remote_code)
    except (ModelLoadError, ConfigError):
        raise
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load {name}: {msg}") from e
    return TransformersModel(
        model, tok, name=name, source=src.kind, load_seconds=time.perf_counter() - t0, compile=compile
    )


def _load_hub(name: str, dt: torch.dtype, dev: torch.device, trust_remote_code: bool) -> tuple[Any, Any]:
    try:  # a model already in the local hub cache works offline
        return from_pretrained(name, dt, dev, trust_remote_code, local_only=True)
    except OSError:
        pass
    hub.require_hub(name)
    try:
        return from_pretrained(name, dt, dev, trust_remote_code, local_only=False)
    except OSError as e:
        text = str(e)
        if any(s in text for s in ("connect", "Connection", "resolve", "offline", "Max retries", "timed out")):
            raise OfflineError(
                f"cannot reach the Hugging Face hub to download {name}; use a catalog model "
                f"(`selar models list`), a folder or a GGUF file"
            ) from None
        raise ModelLoadError(f"could not load {name} from the hub: {text.strip().splitlines()[0]}") from None


def wrap(hf_model: Any, tokenizer: Any, name: str = "model", compile: str = "auto") -> TransformersModel:
    """Use an already loaded transformers model and tokenizer."""
    return TransformersModel(hf_model, tokenizer, name=name, source="object", compile=compile)


class _Entry:
    """The transformers engine's registry entry."""

    load = staticmethod(load)

    @staticmethod
    def sizing(rows: int, positions: int) -> dict:
        return {}  # the KV cache grows as needed


ENTRY = _Entry()
