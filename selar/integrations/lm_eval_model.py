"""lm-evaluation-harness's `selar` model: generative tasks decoded with a selar method.

    lm_eval --model selar --model_args pretrained=qwen2.5-coder-0.5b,method=selar,tau=0.5 \\
        --tasks gsm8k --apply_chat_template

(With lm-eval 0.4.13, which predates lm-eval's plugin entry points, run the same arguments
through `python -m selar.integrations.lm_eval_cli`; see that module.)

model_args: `pretrained` (a catalog name, folder, GGUF file or hub id, as `selar.load_model`
takes, or an already loaded `selar.Model` from Python), `method` (default "selar"), `engine`
(transformers, llamacpp, vllm), `dtype`, `device`, `seed`, `max_gen_toks` (default 256, when a
task sets none), `enable_thinking` (chat template; default true), `strip_thinking` (default
true), `think_end_token` (default `</think>` when the model has it), `trust_remote_code`, and
any of the method's options or sampling settings (`tau`, `k`, `soft_scope`, `temperature`, ...).

Each request is decoded as selar eval decodes it: the prompt through the chat template when
lm-eval applies it (`--apply_chat_template`, as `selar eval` always does), the protocol's
answer guard on non-thinking models, every row seeded alone by (seed, task, document, repeat)
with `selar.eval.runner.row_seed` (the seeds `selar eval --data TASK.jsonl` gives when the task
is named after the file), in batches of `batch_size` requests in lm-eval's order (as selar eval's
fixed schedule batches its problems: the same batches, so float32 results agree row for row).
Sampling comes from the task's `generation_kwargs` (`do_sample`, `temperature`, `top_p`,
`top_k`, `min_p`; greedy when it sets none, as lm-eval's own models do), else from model_args;
`until` strings stop a row and are cut off, `max_gen_toks` bounds it.

Thinking models: the returned text is what follows the last `</think>` (the reasoning is
stripped, as lm-eval expects with `think_end_token`), and the `until` strings stop a row only
once its reasoning has ended (on step-wise engines; lm-eval's own models also stop inside the
reasoning, e.g. at a blank line). Loglikelihood requests (multiple-choice, perplexity) are
refused: selar changes how text is generated, not how a given text is scored.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Optional, Union

import lm_eval.models  # noqa: F401  (the built-in models first: lm-eval only adds them to an empty registry)
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm

from ..api import new_session
from ..decode import run_to_end
from ..engines import Model, load_model, load_options
from ..errors import CapabilityError, ConfigError
from ..eval import protocol
from ..eval.runner import row_seed
from ..methods import make_config
from ..text import stop_checker

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p")
LOGLIKELIHOOD_REFUSAL = (
    "the selar model generates text only (generate_until tasks); {kind} requests (multiple-choice and "
    "perplexity tasks) score a given text, which a decoding method does not change: run those tasks with "
    "lm-eval's hf model"
)


def _batch_size(value: Any) -> int:
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return 16
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"batch_size must be a positive integer or auto, got {value!r}") from None
    if n < 1:
        raise ConfigError(f"batch_size must be a positive integer or auto, got {value!r}")
    return n


def _device(device: Optional[str]) -> str:
    """lm-eval's CLI asks for cuda:0 unless told otherwise; like its hf model, fall back to what
    this machine has when CUDA is not there."""
    if not device or (str(device).startswith("cuda") and not torch.cuda.is_available()):
        return "auto"
    return str(device)


@register_model("selar")
class SelarLM(LM):
    def __init__(
        self,
        pretrained: Union[str, Model, None] = None,
        method: str = "selar",
        engine: str = "transformers",
        dtype: str = "auto",
        device: Optional[str] = None,
        batch_size: Any = 16,
        max_batch_size: Any = None,
        max_gen_toks: int = 256,
        seed: int = 0,
        enable_thinking: bool = True,
        strip_thinking: bool = True,
        think_end_token: Union[str, int, None] = None,
        trust_remote_code: bool = False,
        **options: Any,
    ):
        super().__init__()
        if pretrained is None:
            raise ConfigError("give the model as pretrained=NAME (a catalog name, folder, GGUF file or hub id)")
        self.method, self.seed = method, int(seed)
        self.batch_size = _batch_size(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        make_config(method, **options)  # bad options fail before the model loads
        if isinstance(pretrained, Model):
            self.model = pretrained
        else:
            self.model = load_model(
                str(pretrained),
                dtype=dtype,
                device=_device(device),
                trust_remote_code=bool(trust_remote_code),
                engine=engine,
                **load_options(engine, self.batch_size, self.max_gen_toks),
            )
        self.model.check_method(method)
        m = self.model
        defaults = protocol.defaults("", method, **protocol.model_facts(m))
        defaults.pop("max_new_tokens")
        self.options = {**defaults, **options}
        make_config(method, **self.options)
        self.enable_thinking = bool(enable_thinking)
        tok = m.tokenizer
        if isinstance(think_end_token, int):
            think_end_token = tok.convert_ids_to_tokens(think_end_token)
        if think_end_token is None and m.think_end is not None:
            think_end_token = tok.convert_ids_to_tokens(m.think_end)
        self.think_end = think_end_token if strip_thinking else None
        self.think_end_id = tok.convert_tokens_to_ids(self.think_end) if self.think_end else None
        if self.think_end_id == tok.unk_token_id:
            self.think_end_id = None
        self._templated: set[str] = set()

    # -- what lm-eval asks of a model -------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return str(self.model.name).replace("/", "__")

    def chat_template(self, chat_template: Union[bool, str] = False) -> Optional[str]:
        tmpl = getattr(self.model.tokenizer, "chat_template", None)
        return tmpl if chat_template and isinstance(tmpl, str) else ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        text = self.model.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
            enable_thinking=self.enable_thinking,
        )
        self._templated.add(text)
        return str(text)

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list:
        raise CapabilityError(LOGLIKELIHOOD_REFUSAL.format(kind="loglikelihood"))

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list:
        raise CapabilityError(LOGLIKELIHOOD_REFUSAL.format(kind="loglikelihood_rolling"))

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        out: list[Optional[str]] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            key = json.dumps(req.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(i)
        seen: Counter = Counter()  # lm-eval repeats an instance `repeats` times: each copy is a sample
        seeds = []
        for req in requests:
            k = (req.task_name, req.doc_id)
            seeds.append(row_seed(self.seed, str(req.task_name), str(req.doc_id), seen[k]))
            seen[k] += 1
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="selar generate_until")
        for idx in groups.values():
            gen_kwargs = requests[idx[0]].args[1]
            opts, until = self._options(gen_kwargs)
            cfg = make_config(self.method, **opts)
            ids = {i: self._encode(requests[i].args[0], opts["max_new_tokens"]) for i in idx}
            # batches in request order (documents, each one's repeats together), as selar eval's
            # fixed schedule cuts its problems, so that both runs decode the same batches
            for b in range(0, len(idx), self.batch_size):
                chunk = idx[b : b + self.batch_size]
                rows = self._run(cfg, [ids[i] for i in chunk], [seeds[i] for i in chunk])
                for i, row in zip(chunk, rows):
                    out[i] = self._text(row.token_ids, until)
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
                bar.update(len(chunk))
        bar.close()
        return [o if o is not None else "" for o in out]

    # -- helpers ------------------------------------------------------------------------------
    def _options(self, gen_kwargs: dict) -> tuple[dict, list[str]]:
        """selar options for one group of requests, and the task's `until` strings."""
        raw = dict(gen_kwargs or {})
        kw = dict(normalize_gen_kwargs(raw, self.max_gen_toks))
        until = [u for u in kw.pop("until") if isinstance(u, str) and u]
        opts = dict(self.options)
        opts["max_new_tokens"] = int(kw.pop("max_gen_toks"))
        do_sample = kw.pop("do_sample")
        task_sets_sampling = "do_sample" in raw or "temperature" in raw
        temperature = kw.pop("temperature", None)
        if task_sets_sampling:
            opts["temperature"] = float(temperature) if do_sample and temperature is not None else 0.0
            if do_sample and temperature is None:
                opts["temperature"] = float(self.options.get("temperature", 0.6))
        elif "temperature" not in self.options:
            opts["temperature"] = 0.0  # lm-eval's convention: greedy unless asked otherwise
        opts.update(kw)  # top_p, top_k, min_p, method options from the task or --gen_kwargs
        specials = set(self.model.tokenizer.all_special_tokens)
        opts["stop"] = tuple(u for u in until if u not in specials)  # special tokens: the stop ids end rows
        return opts, until

    def _encode(self, context: str, max_new_tokens: int) -> list[int]:
        tok = self.model.tokenizer
        bos = getattr(tok, "bos_token", None)
        templated = context in self._templated or (bos and context.startswith(bos))
        ids = tok.encode(context, add_special_tokens=not templated)
        room = (self.model.max_positions or 0) - max_new_tokens
        if self.model.max_positions and len(ids) > room:
            ids = ids[-max(1, room) :]  # left truncation, as lm-eval's models do
        return list(ids)

    def _run(self, cfg: Any, prompts: list[list[int]], seeds: list[int]) -> list:
        m = self.model
        if cfg.sampling.stop and self.think_end_id is not None and m.capabilities.stepwise:
            check, end = stop_checker(m.tokenizer, cfg.sampling.stop), self.think_end_id
            answering: set[int] = set()  # rows past their think end (a check sees only a row's tail)

            def after_reasoning(row: int, tail: list[int]) -> bool:
                if end in tail:
                    answering.add(row)
                    tail = tail[len(tail) - tail[::-1].index(end) :]
                return row in answering and bool(tail) and check(tail)

            return run_to_end(new_session(m, cfg, stop_check=after_reasoning), prompts, seeds)
        return m.run(prompts, cfg, seeds, batch_size=len(prompts))

    def _text(self, token_ids: list[int], until: list[str]) -> str:
        """The answer lm-eval grades: after the last think-end token (found by id, since a
        tokenizer may treat it as special and drop it from decoded text), cut at `until`."""
        think_end = self.think_end
        if self.think_end_id is not None and self.think_end_id in token_ids:
            token_ids = token_ids[len(token_ids) - token_ids[::-1].index(self.think_end_id) :]
            think_end = None
        text = self.model.tokenizer.decode(token_ids, skip_special_tokens=True)
        if think_end is None and self.think_end_id is not None:
            text = text.lstrip()
        return str(postprocess_generated_text(text, until, think_end))

    def get_model_info(self) -> dict:
        m = self.model
        return {"model": m.name, "engine": m.engine, "dtype": str(m.dtype), "method": self.method}
