"""Requests at the door: the server's settings, its OpenAI-style error, and the validation of a
request body into prompt token ids and a `GenerationConfig`. Every field's type and range is
checked here (400 naming the field), and the method is built once for its options, so a request
that would fail inside the decode thread is refused before it gets there."""

from __future__ import annotations

import dataclasses
import threading
import typing
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Union

from ..api import format_prompt
from ..config import INT64_MAX, INT64_MIN, GenerationConfig, SamplingConfig
from ..errors import SelarError
from ..methods import all_option_names, get_method_spec, make_config, option_names

# fields OpenAI clients send that are accepted and ignored
IGNORED = frozenset(
    {
        "user",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "response_format",
        "service_tier",
        "service_level",
        "parallel_tool_calls",
        "metadata",
        "store",
        "echo",
        "best_of",
        "suffix",
        "reasoning_effort",
        "modalities",
    }
)
# fields of the API itself (the method's options and the sampling settings come on top)
API_FIELDS = frozenset(
    {"model", "stream", "stream_options", "n", "max_tokens", "max_completion_tokens", "method", "raw", "stop"}
)
ROLES = ("system", "user", "assistant", "developer", "tool")
MAX_STOPS = 8


@dataclass
class Settings:
    model_name: str
    api_key: Optional[str] = None
    max_prompt_tokens: int = 8192
    max_tokens: int = 4096
    default_max_tokens: int = 1024
    max_body_bytes: int = 1 << 20
    timeout: float = 600.0  # seconds per request (504 beyond)
    default_method: str = "selar"
    defaults: dict = dataclasses.field(default_factory=dict)  # server-wide option defaults
    body_timeout: float = 30.0  # seconds to receive a request body (408 beyond)
    docs: bool = True  # serve /docs (the OpenAPI schema is always at /openapi.json)


class APIError(Exception):
    """An error answered with an OpenAI-style body: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: Optional[str] = None,
        type_: str = "invalid_request_error",
        headers: Optional[dict] = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.headers = status, message, param, type_, headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.type)


def safe_text(s: Any) -> str:
    """`s` as text that can be encoded (lone surrogates escaped)."""
    return str(s).encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(status: int, message: str, param: Optional[str] = None, type_: str = "invalid_request_error") -> dict:
    return {
        "error": {
            "message": safe_text(message),
            "type": type_,
            "param": None if param is None else safe_text(param),
            "code": status,
        }
    }


class Parsed(NamedTuple):
    prompt_ids: list[int]
    config: GenerationConfig
    stream: bool
    include_usage: bool


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need(name: str, ok: bool, what: str) -> None:
    if not ok:
        raise APIError(400, f"'{name}' must be {what}", name)


def check_text(body: Any) -> None:
    """Refuse lone UTF-16 surrogates (e.g. "\\ud800") anywhere in the body, keys included: they are
    not text, and no tokenizer or JSON writer takes them."""
    todo = [(body, None)]
    while todo:
        v, top = todo.pop()
        if isinstance(v, str):
            bad = not v.isascii() and _has_surrogate(v)
        elif isinstance(v, dict):
            bad = False
            for k, x in v.items():
                where = top if top is not None else k
                if isinstance(k, str) and not k.isascii() and _has_surrogate(k):
                    raise APIError(400, "a field name holds a lone UTF-16 surrogate, which is not text", "body")
                todo.append((x, where))
        elif isinstance(v, list):
            bad = False
            todo.extend((x, top) for x in v)
        else:
            bad = False
        if bad:
            raise APIError(
                400, f"'{top or 'body'}' holds a lone UTF-16 surrogate (such as \\ud800), which is not text", top
            )


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


class MethodCheck:
    """Builds each method once per distinct options (as the decode thread will), so options a
    method refuses (e.g. `k` above the vocabulary size) are a 400 at the door. Thread-safe."""

    def __init__(self, model, size: int = 512):
        self.model, self.size = model, size
        self.seen: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def __call__(self, cfg: GenerationConfig) -> None:
        key = (cfg.method, repr(cfg.options))
        with self.lock:
            if key in self.seen:
                self.seen.move_to_end(key)
                return
        self.model.check_method(cfg.method)
        try:
            get_method_spec(cfg.method).factory(cfg.options, self.model.vocab_info())
        except SelarError:
            raise
        except Exception as e:  # an option the method's own validation missed
            raise APIError(
                400, f"method {cfg.method} refuses these options: {type(e).__name__}: {str(e)[:200]}", "method"
            ) from None
        with self.lock:
            self.seen[key] = True
            while len(self.seen) > self.size:
                self.seen.popitem(last=False)


def _kind_error(name: str, value: Any, hint: Any) -> Optional[str]:
    """What a boolean or text option must be, when `value` is not that (numbers are checked by
    the options' own ranges); None when it fits or is not one of those."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is Union else [hint]
    if len(args) != 1:
        return None
    kind = args[0]
    if kind is bool and not isinstance(value, bool):
        return f"{name} must be true or false, got {value!r}"
    if kind is str and not isinstance(value, str):
        return f"{name} must be a string, got {value!r}"
    return None


def _check_kinds(method: str, opts: dict) -> None:
    hints = {**typing.get_type_hints(SamplingConfig), **typing.get_type_hints(get_method_spec(method).options)}
    for name, value in opts.items():
        msg = _kind_error(name, value, hints.get(name))
        if msg:
            raise APIError(400, msg, name)


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or m["role"] not in ROLES:
            raise APIError(400, f"messages[{i}] needs a role of {', '.join(ROLES)}", "messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: the text ones
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise APIError(400, f"messages[{i}].content parts must be text parts", "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string", "messages")
        out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
    if not any(m["content"].strip() for m in out):
        raise APIError(400, "the messages are empty", "messages")
    return out


def _too_long(tok, text: str, limit: int) -> Optional[int]:
    """A lower bound of the tokens of a text far longer than `limit` tokens could be, from a
    prefix (cut at a space, so the prefix has at most a few tokens more than its part of the
    whole); None when the text may fit. A 1 MB prompt is refused without tokenising all of it."""
    cut = 16 * limit
    if len(text) <= cut:
        return None
    at = text.rfind(" ", cut // 2, cut)
    n = len(tok.encode(text[: at if at > 0 else cut], add_special_tokens=False))
    return n - 16 if n - 16 > limit else None


def _prompt_ids(body: dict, kind: str, model, raw: bool, limit: int) -> list[int]:
    tok = model.tokenizer
    where = "messages" if kind == "chat" else "prompt"
    if kind == "chat":
        msgs = _messages(body)
        text = "\n".join(m["content"] for m in msgs)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise APIError(400, "'prompt' must be a string (or a list of one string)", "prompt")
        text = prompt
    least = _too_long(tok, text, limit)
    if least is not None:
        raise APIError(400, f"the prompt has more than {least} tokens; this server allows {limit}", where)
    if kind == "chat":
        if getattr(tok, "chat_template", None) and not raw:
            try:
                text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=True)
            except Exception as e:
                raise APIError(400, f"the chat template rejects these messages: {str(e)[:200]}", "messages") from None
            return list(tok.encode(text, add_special_tokens=False))
        return list(tok.encode("\n".join(m["content"] for m in msgs), add_special_tokens=True))
    try:
        return list(format_prompt(model, text, raw=raw))
    except SelarError as e:
        raise APIError(400, str(e), "prompt") from None


def _max_tokens(body: dict, settings: Settings) -> int:
    given = [k for k in ("max_completion_tokens", "max_tokens", "max_new_tokens") if body.get(k) is not None]
    for k in given:
        v = body[k]
        _need(k, _is_int(v), "an integer")
        if not 1 <= v <= settings.max_tokens:
            raise APIError(400, f"'{k}' must be in [1, {settings.max_tokens}], got {v}", k)
    if given:
        return body[given[0]]
    default = settings.defaults.get("max_new_tokens")  # `selar serve --set max_new_tokens=N`
    if isinstance(default, int) and not isinstance(default, bool) and default >= 1:
        return min(default, settings.max_tokens)
    return settings.default_max_tokens


def _strings(name: str, value: Any, most: int) -> tuple[str, ...]:
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not 1 <= len(value) <= most or not all(isinstance(s, str) and s for s in value):
        raise APIError(400, f"'{name}' must be a string or a list of 1 to {most} non-empty strings", name)
    return tuple(value)


def parse_request(body: Any, kind: str, model, settings: Settings, check: Optional[MethodCheck] = None) -> Parsed:
    """Validate a request body (kind "chat" or "completion"); tokenise its prompt. Raises APIError."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    check_text(body)
    allowed = API_FIELDS | IGNORED | all_option_names() | ({"messages"} if kind == "chat" else {"prompt"})
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise APIError(400, f"unknown field(s): {', '.join(unknown)}", unknown[0])
    if "model" in body:
        _need("model", isinstance(body["model"], str), "a string")
        if body["model"] not in (settings.model_name, "selar"):
            raise APIError(
                404,
                f"model '{body['model']}' is not served here; this server serves '{settings.model_name}'",
                "model",
                "not_found_error",
            )
    stream = body.get("stream", False)
    stream = False if stream is None else stream
    _need("stream", isinstance(stream, bool), "true or false")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        _need(
            "stream_options",
            isinstance(options, dict)
            and set(options) <= {"include_usage"}
            and isinstance(options.get("include_usage", False), bool),
            'an object {"include_usage": true|false}',
        )
        include_usage = bool(options.get("include_usage", False))
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise APIError(400, "only n=1 is supported", "n")
    raw = body.get("raw", kind == "completion")
    _need("raw", isinstance(raw, bool), "true or false")
    method = body.get("method", settings.default_method)
    method = settings.default_method if method is None else method
    _need("method", isinstance(method, str), "a string")
    try:
        own = option_names(method)
    except SelarError as e:
        raise APIError(400, str(e), "method") from None

    opts = {k: v for k, v in settings.defaults.items() if k in own}
    opts["max_new_tokens"] = _max_tokens(body, settings)
    for key, value in body.items():
        if key in API_FIELDS or key in IGNORED or key in ("messages", "prompt", "max_new_tokens") or value is None:
            continue
        if key not in own:
            raise APIError(400, f"method {method} has no option {key}", key)
        if key == "answer_markers":
            value = _strings(key, value, MAX_STOPS)
        elif isinstance(value, (dict, list)):
            raise APIError(400, f"'{key}' must be a number, a string or a boolean", key)
        opts[key] = value
    if body.get("stop") is not None:
        opts["stop"] = _strings("stop", body["stop"], MAX_STOPS)
    if body.get("min_new_tokens") is None and "min_new_tokens" in opts:  # a server default: within the budget
        opts["min_new_tokens"] = min(opts["min_new_tokens"], opts["max_new_tokens"])
    seed = body.get("seed")
    if seed is None and settings.defaults.get("seed") is None:
        opts["seed"] = int.from_bytes(uuid.uuid4().bytes[:6], "big")  # OpenAI semantics: random unless given
    elif isinstance(seed, int) and not isinstance(seed, bool) and not INT64_MIN <= seed <= INT64_MAX:
        raise APIError(400, f"'seed' must be a 64-bit integer, got {seed}", "seed")
    _check_kinds(method, opts)
    try:
        cfg = make_config(method, **opts)
        if check is not None:
            check(cfg)
    except SelarError as e:
        msg = str(e)
        first = msg.split(" ", 1)[0].strip("'")
        raise APIError(400, msg, first if first in own else "method") from None

    limit = min(settings.max_prompt_tokens, (model.max_positions or settings.max_prompt_tokens + 1) - 1)
    try:
        prompt_ids = _prompt_ids(body, kind, model, raw, limit)
    except APIError:
        raise
    except Exception as e:  # the tokenizer refuses this text
        raise APIError(
            400,
            f"the prompt could not be tokenised ({type(e).__name__}: {str(e)[:200]})",
            "messages" if kind == "chat" else "prompt",
        ) from None
    where = "messages" if kind == "chat" else "prompt"
    if model.max_positions and len(prompt_ids) >= model.max_positions:
        raise APIError(
            400,
            f"the prompt has {len(prompt_ids)} tokens, more than the model's context of {model.max_positions}",
            where,
        )
    if len(prompt_ids) > settings.max_prompt_tokens:
        raise APIError(
            400, f"the prompt has {len(prompt_ids)} tokens; this server allows {settings.max_prompt_tokens}", where
        )
    return Parsed(prompt_ids, cfg, stream, include_usage)
