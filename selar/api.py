"""The Python API: `generate(model, prompts, method="selar", **options)`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence, Union

from .config import GenerationConfig, make_config
from .decode import DecodeSession, RowOutput, run_to_end
from .errors import ConfigError, PromptError
from .methods import get_method_spec
from .models import Model, load_model


@dataclass
class Result:
    """What one prompt produced."""

    prompt: str
    text: str                      # the generated text (emitted tokens, special tokens skipped)
    prompt_token_ids: list[int]
    token_ids: list[int]           # emitted tokens, the stop token included when there is one
    num_tokens: int
    num_soft_steps: int            # steps whose next input was a soft mixture
    finish_reason: str             # stop | length | stop_string | method
    method: str
    trace: Optional[list[dict]] = None  # per token: token, text, entropy, soft

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
        return d


def format_prompt(model: Model, prompt: str, raw: bool = False) -> list[int]:
    """Token ids of a prompt: through the chat template (thinking enabled where the template
    supports it) unless `raw` or the tokenizer has no template."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("the prompt is empty")
    tok = model.tokenizer
    if raw or not getattr(tok, "chat_template", None):
        return tok.encode(prompt, add_special_tokens=True)
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=True)
    return tok.encode(text, add_special_tokens=False)


def _stop_checker(tokenizer, stops: Sequence[str]) -> Callable[[int, list[int]], bool]:
    tail = max(len(s) for s in stops) + 16

    def check(_row: int, ids: list[int]) -> bool:
        text = tokenizer.decode(ids[-tail:], skip_special_tokens=True)
        return any(s in text for s in stops)

    return check


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def generate(model: Union[Model, str], prompts: Union[str, Sequence[str]], method: str = "selar", *,
             config: Optional[GenerationConfig] = None, raw: bool = False, trace: bool = False,
             batch_size: int = 16, seeds: Optional[Sequence[int]] = None,
             prompt_token_ids: Optional[Sequence[Sequence[int]]] = None,
             on_step: Optional[Callable] = None, **options) -> list[Result]:
    """Generate from each prompt with one method. Options are the sampling settings
    (temperature, top_p, top_k, min_p, max_new_tokens, seed, stop, soft_scope) and the method's
    own (e.g. tau, k, push_weight for selar). Every prompt uses `seed` (or its own entry of
    `seeds`), so a prompt's output does not depend on the rest of its batch."""
    if isinstance(model, str):
        model = load_model(model)
    cfg = config or make_config(method, **options)
    if config is not None and options:
        raise ConfigError("give either config= or keyword options, not both")
    single = isinstance(prompts, str)
    prompts = [prompts] if single else list(prompts)
    if prompt_token_ids is None:
        if not prompts:
            raise PromptError("no prompts given")
        prompt_token_ids = [format_prompt(model, p, raw) for p in prompts]
    else:
        prompt_token_ids = [list(p) for p in prompt_token_ids]
        prompts = prompts or [model.tokenizer.decode(p) for p in prompt_token_ids]
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    for p, ids in zip(prompts, prompt_token_ids):
        if not ids:
            raise PromptError("a prompt has no tokens")
        if model.max_positions and len(ids) >= model.max_positions:
            raise PromptError(f"a prompt has {len(ids)} tokens, more than the model's context of "
                              f"{model.max_positions}")
    seeds = list(seeds) if seeds is not None else [cfg.sampling.seed] * len(prompts)
    if len(seeds) != len(prompts):
        raise ConfigError(f"seeds has {len(seeds)} entries for {len(prompts)} prompts")
    if hasattr(model, "run_rows"):  # an engine with its own decode loop and batching (vLLM)
        if on_step is not None:
            raise ConfigError(f"token streaming is not available on the {model.engine} engine")
        rows = model.run_rows(prompt_token_ids, cfg, seeds)
        return [make_result(model, cfg, p, ids, row, trace) for p, ids, row in zip(prompts, prompt_token_ids, rows)]
    # batches of similar lengths waste less padding; results come back in prompt order
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_token_ids[i]))
    results: list[Optional[Result]] = [None] * len(prompts)
    for b in range(0, len(order), batch_size):
        idx = order[b: b + batch_size]
        step_cb = None
        if on_step is not None:
            step_cb = lambda rows, toks, soft, idx=idx: on_step([idx[r] for r in rows.tolist()], toks.tolist(), soft.tolist())  # noqa: E731
        rows = run_to_end(new_session(model, cfg, on_step=step_cb), [prompt_token_ids[i] for i in idx],
                           [seeds[i] for i in idx])
        for i, row in zip(idx, rows):
            results[i] = make_result(model, cfg, prompts[i], prompt_token_ids[i], row, trace)
    return results


def new_session(model: Model, cfg: GenerationConfig, on_step: Optional[Callable] = None,
                stop_check: Optional[Callable] = None) -> DecodeSession:
    """A decode session of `model` with one method and sampling config (rows are added later)."""
    s = cfg.sampling
    scope = s.soft_scope if s.soft_scope != "auto" else ("reasoning" if model.is_thinking else "all")
    if stop_check is None and s.stop:
        stop_check = _stop_checker(model.tokenizer, s.stop)
    method = get_method_spec(cfg.method).factory(cfg.options, model.vocab_info())
    return DecodeSession(model.make_engine(), method, s, stop_ids=model.stop_ids,
                         think_end=model.think_end, reasoning_scope=scope == "reasoning",
                         max_positions=model.max_positions, stop_check=stop_check, on_step=on_step)


def make_result(model: Model, cfg: GenerationConfig, prompt: str, prompt_ids: list[int], row: RowOutput,
                trace: bool = False) -> Result:
    text = model.tokenizer.decode(row.token_ids, skip_special_tokens=True)
    if row.finish_reason == "stop_string":
        text = cut_at_stop(text, cfg.sampling.stop)
    tr = None
    if trace:
        pieces = model.tokenizer.convert_ids_to_tokens(row.token_ids)
        tr = [{"token": t, "text": model.tokenizer.convert_tokens_to_string([p]), "entropy": round(e, 6), "soft": sf}
              for t, p, e, sf in zip(row.token_ids, pieces, row.entropy, row.soft)]
    return Result(prompt=prompt, text=text, prompt_token_ids=list(prompt_ids), token_ids=row.token_ids,
                  num_tokens=len(row.token_ids), num_soft_steps=sum(row.soft), finish_reason=row.finish_reason,
                  method=cfg.method, trace=tr)
