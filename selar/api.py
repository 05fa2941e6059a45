"""The Python API: `generate(model, prompts, method="selar", **options)`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Optional, Union

from .config import GenerationConfig
from .decode import DecodeSession, RowOutput
from .decode import new_session as _new_session
from .engines import Model, load_model
from .errors import ConfigError, PromptError
from .methods import make_config
from .text import cut_at_stop


@dataclass
class Result:
    """What one prompt produced."""

    prompt: str
    text: str  # the generated text (emitted tokens, special tokens skipped)
    prompt_token_ids: list[int]
    token_ids: list[int]  # emitted tokens, the stop token included when there is one
    num_tokens: int
    num_soft_steps: int  # steps whose next input was a soft mixture
    finish_reason: str  # stop | length | stop_string | method (a forced answer ends by stop or length)
    method: str
    trace: Optional[list[dict]] = None  # per token: token, text, entropy, soft
    forced_at: Optional[int] = None  # force_answer_at: the step its answer was forced at (None: not forced)

    @property
    def reasoning(self) -> str:
        """The text before the last </think> ('' when there is none)."""
        head, sep, _ = self.text.rpartition("</think>")
        return head.replace("<think>", "", 1).strip() if sep else ""

    @property
    def answer(self) -> str:
        """The text after the last </think> (all of it when there is none)."""
        return self.text.rpartition("</think>")[2].strip()

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.trace is None:
            d.pop("trace")
        if self.forced_at is None:
            d.pop("forced_at")
        return d


def format_prompt(model: Model, prompt: str, raw: bool = False) -> list[int]:
    """Token ids of a prompt: through the chat template (thinking enabled where the template
    supports it) unless `raw` or the tokenizer has no template."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("the prompt is empty")
    tok = model.tokenizer
    if raw or not getattr(tok, "chat_template", None):
        return tok.encode(prompt, add_special_tokens=True)
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    return tok.encode(text, add_special_tokens=False)


def generate(
    model: Union[Model, str],
    prompts: Union[str, Sequence[str]],
    method: Optional[str] = None,
    *,
    config: Optional[GenerationConfig] = None,
    raw: bool = False,
    trace: bool = False,
    batch_size: int = 16,
    seeds: Optional[Sequence[int]] = None,
    prompt_token_ids: Optional[Sequence[Sequence[int]]] = None,
    on_step: Optional[Callable] = None,
    **options,
) -> list[Result]:
    """Generate from each prompt with one method (default "selar"). Options are the sampling settings
    (temperature, top_p, top_k, min_p, presence_penalty, frequency_penalty, repetition_penalty,
    max_new_tokens, seed, stop, soft_scope, force_answer_at, ...; see `SamplingConfig`) and the method's
    own (e.g. tau, k, push_weight for selar). Every prompt uses `seed` (or its own entry of
    `seeds`), so a prompt's output does not depend on the rest of its batch."""
    if isinstance(model, str):
        model = load_model(model)
    if config is not None and options:
        raise ConfigError("give either config= or keyword options, not both")
    if config is not None and method is not None and method != config.method:
        raise ConfigError(f"method {method!r} differs from config.method {config.method!r}; give one of them")
    cfg = config or make_config(method or "selar", **options)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if prompt_token_ids is None:
        if not prompts:
            raise PromptError("no prompts given")
        prompt_token_ids = [format_prompt(model, p, raw) for p in prompts]
    else:
        prompt_token_ids = [list(p) for p in prompt_token_ids]
        if prompts and len(prompts) != len(prompt_token_ids):
            raise ConfigError(
                f"prompts has {len(prompts)} entries and prompt_token_ids {len(prompt_token_ids)}; "
                f"give one per prompt (or prompts=[] to decode the ids)"
            )
        prompts = prompts or [model.tokenizer.decode(p) for p in prompt_token_ids]
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    for ids in prompt_token_ids:
        if not ids:
            raise PromptError("a prompt has no tokens")
        if model.max_positions and len(ids) >= model.max_positions:
            raise PromptError(f"a prompt has {len(ids)} tokens, more than the model's context of {model.max_positions}")
    seeds = list(seeds) if seeds is not None else [cfg.sampling.seed] * len(prompts)
    if len(seeds) != len(prompts):
        raise ConfigError(f"seeds has {len(seeds)} entries for {len(prompts)} prompts")
    rows = model.run(prompt_token_ids, cfg, seeds, batch_size=batch_size, on_step=on_step)
    return [make_result(model, cfg, p, list(ids), row, trace) for p, ids, row in zip(prompts, prompt_token_ids, rows)]


def new_session(
    model: Model, cfg: GenerationConfig, on_step: Optional[Callable] = None, stop_check: Optional[Callable] = None
) -> DecodeSession:
    """A step-wise decode session of `model` with one method and sampling config (rows are added
    later; see `selar.decode.new_session`)."""
    return _new_session(model, cfg, on_step=on_step, stop_check=stop_check)


def make_result(
    model: Model, cfg: GenerationConfig, prompt: str, prompt_ids: list[int], row: RowOutput, trace: bool = False
) -> Result:
    text = model.tokenizer.decode(row.token_ids, skip_special_tokens=True)
    if row.finish_reason == "stop_string":
        text = cut_at_stop(text, cfg.sampling.stop)
    tr = None
    if trace:
        pieces = model.tokenizer.convert_ids_to_tokens(row.token_ids)
        tr = [
            {"token": t, "text": model.tokenizer.convert_tokens_to_string([p]), "entropy": round(e, 6), "soft": sf}
            for t, p, e, sf in zip(row.token_ids, pieces, row.entropy, row.soft)
        ]
    return Result(
        prompt=prompt,
        text=text,
        prompt_token_ids=list(prompt_ids),
        token_ids=row.token_ids,
        num_tokens=len(row.token_ids),
        num_soft_steps=sum(row.soft),
        finish_reason=row.finish_reason,
        method=cfg.method,
        trace=tr,
        forced_at=row.forced_at,
    )
