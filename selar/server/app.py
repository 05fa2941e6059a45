"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions (with SSE streaming),
/v1/models and /health. The decoding method and its options come as extra body fields."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import SAMPLING_FIELDS
from ..errors import SelarError
from ..methods import METHODS, make_config
from ..text import cut_at_stop
from .scheduler import Job, QueueFull, Scheduler

# fields OpenAI clients send that we accept and ignore
IGNORED = {"user", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "n",
           "response_format", "service_level", "parallel_tool_calls", "metadata", "store", "echo", "best_of",
           "suffix", "stream_options", "reasoning_effort", "modalities"}
COMMON = {"model", "stream", "max_tokens", "max_completion_tokens", "method", "raw", *SAMPLING_FIELDS}


@dataclass
class Settings:
    model_name: str
    api_key: Optional[str] = None
    max_prompt_tokens: int = 8192
    max_tokens: int = 4096
    default_max_tokens: int = 1024
    max_body_bytes: int = 1 << 20
    timeout: float = 600.0
    default_method: str = "selar"
    defaults: dict = dataclasses.field(default_factory=dict)  # server-wide option defaults


class APIError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, type_: str = "invalid_request_error",
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.headers = status, message, param, type_, headers or {}


def _method_fields() -> set[str]:
    out = set()
    for spec in METHODS.values():
        out |= {f.name for f in dataclasses.fields(spec.options)}
    return out


def _check_type(name: str, value: Any, kinds: tuple, what: str) -> None:
    if isinstance(value, bool) and bool not in kinds:
        raise APIError(400, f"'{name}' must be {what}", name)
    if not isinstance(value, kinds):
        raise APIError(400, f"'{name}' must be {what}", name)
    if isinstance(value, float) and not math.isfinite(value):
        raise APIError(400, f"'{name}' must be a finite number", name)


def parse_request(body: Any, kind: str, model, settings: Settings):
    """Validate a request body; return (prompt token ids, GenerationConfig, stream, include_usage)."""
    from ..api import format_prompt

    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    allowed = COMMON | IGNORED | _method_fields() | ({"messages"} if kind == "chat" else {"prompt"})
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise APIError(400, f"unknown field(s): {', '.join(unknown)}", unknown[0])
    if "model" in body:
        _check_type("model", body["model"], (str,), "a string")
        if body["model"] not in (settings.model_name, "selar"):
            raise APIError(404, f"model '{body['model']}' is not served here; this server serves "
                                f"'{settings.model_name}'", "model", "not_found_error")
    stream = body.get("stream", False)
    _check_type("stream", stream, (bool,), "true or false")
    include_usage = False
    if "stream_options" in body and body["stream_options"] is not None:
        _check_type("stream_options", body["stream_options"], (dict,), "an object")
        include_usage = bool(body["stream_options"].get("include_usage", False))
    if body.get("n", 1) not in (1, None):
        raise APIError(400, "only n=1 is supported", "n")
    raw = body.get("raw", kind == "completion")
    _check_type("raw", raw, (bool,), "true or false")

    if kind == "chat":
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise APIError(400, "'messages' must be a non-empty list", "messages")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or m["role"] not in (
                    "system", "user", "assistant", "developer", "tool"):
                raise APIError(400, f"messages[{i}] needs a role of system, user, assistant", "messages")
            content = m.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                           for p in content):
                    raise APIError(400, f"messages[{i}].content parts must be text parts", "messages")
                content = "".join(p["text"] for p in content)
            if not isinstance(content, str):
                raise APIError(400, f"messages[{i}].content must be a string", "messages")
            m = {"role": "system" if m["role"] == "developer" else m["role"], "content": content}
            msgs[i] = m
        if not any(m["content"].strip() for m in msgs):
            raise APIError(400, "the messages are empty", "messages")
        tok = model.tokenizer
        if getattr(tok, "chat_template", None) and not raw:
            try:
                text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=True)
            except Exception as e:
                raise APIError(400, f"the chat template rejects these messages: {str(e)[:200]}", "messages") from None
            prompt_ids = tok.encode(text, add_special_tokens=False)
        else:
            prompt_ids = tok.encode("\n".join(m["content"] for m in msgs), add_special_tokens=True)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise APIError(400, "'prompt' must be a string (or a list of one string)", "prompt")
        try:
            prompt_ids = format_prompt(model, prompt, raw=raw)
        except SelarError as e:
            raise APIError(400, str(e), "prompt") from None
    if model.max_positions and len(prompt_ids) >= model.max_positions:
        raise APIError(400, f"the prompt has {len(prompt_ids)} tokens, more than the model's context of "
                            f"{model.max_positions}", "messages" if kind == "chat" else "prompt")
    if len(prompt_ids) > settings.max_prompt_tokens:
        raise APIError(400, f"the prompt has {len(prompt_ids)} tokens; this server allows "
                            f"{settings.max_prompt_tokens}", "messages" if kind == "chat" else "prompt")

    opts = dict(settings.defaults)
    method = body.get("method", settings.default_method)
    _check_type("method", method, (str,), "a string")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = settings.default_max_tokens
    _check_type("max_tokens", max_tokens, (int,), "an integer")
    if not 1 <= max_tokens <= settings.max_tokens:
        raise APIError(400, f"'max_tokens' must be in [1, {settings.max_tokens}], got {max_tokens}", "max_tokens")
    opts["max_new_tokens"] = max_tokens
    if "stop" in body and body["stop"] is not None:
        stop = body["stop"]
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > 8 or not all(isinstance(s, str) and s for s in stop):
            raise APIError(400, "'stop' must be a string or a list of at most 8 non-empty strings", "stop")
        opts["stop"] = tuple(stop)
    for key, value in body.items():
        if key in ("model", "stream", "max_tokens", "max_completion_tokens", "method", "raw", "stop", "messages",
                   "prompt") or key in IGNORED:
            continue
        if value is None:
            continue
        if isinstance(value, (dict, list)):
            raise APIError(400, f"'{key}' must be a number, a string or a boolean", key)
        opts[key] = value
    if "seed" not in body or body["seed"] is None:
        opts["seed"] = int.from_bytes(uuid.uuid4().bytes[:6], "big")  # OpenAI semantics: random unless given
    from ..methods import get_method_spec
    try:
        spec = get_method_spec(method)
        names = {f.name for f in dataclasses.fields(spec.options)} | set(SAMPLING_FIELDS)
        foreign = sorted(k for k in opts if k not in names and k not in settings.defaults)
        if foreign:
            raise APIError(400, f"method {method} has no option(s) {', '.join(foreign)}", foreign[0])
        cfg = make_config(method, **{k: v for k, v in opts.items() if k in names})
    except SelarError as e:
        raise APIError(400, str(e), "method" if "method" in str(e) else None) from None
    return prompt_ids, cfg, stream, include_usage


def create_app(model, scheduler: Scheduler, settings: Settings):
    app = FastAPI(title="selar", version="1", docs_url=None, redoc_url=None)
    think = {model.think_start, model.think_end} - {None}

    def error(status: int, message: str, param=None, type_="invalid_request_error", headers=None):
        return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": status}},
                            status_code=status, headers=headers)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error(exc.status, exc.message, exc.param, exc.type, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return error(exc.status_code, str(exc.detail), type_="invalid_request_error" if exc.status_code < 500 else "server_error")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return error(400, "invalid request")

    @app.exception_handler(Exception)
    async def _internal(request, exc):  # pragma: no cover - a bug; the server keeps serving
        return error(500, f"internal error: {type(exc).__name__}", type_="server_error")

    def check_auth(request: Request) -> None:
        if settings.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise APIError(401, "invalid or missing API key", type_="authentication_error")

    async def read_json(request: Request):
        check_auth(request)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > settings.max_body_bytes):
            raise APIError(413, f"the request body is larger than {settings.max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                raise APIError(413, f"the request body is larger than {settings.max_body_bytes} bytes")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise APIError(400, "the request body is not valid JSON") from None

    def submit(prompt_ids, cfg):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        job = Job(prompt_ids, cfg,
                  on_tokens=lambda ids, soft: loop.call_soon_threadsafe(queue.put_nowait, ("tokens", ids, soft)),
                  on_done=lambda row: loop.call_soon_threadsafe(queue.put_nowait, ("done", row, None)))
        if scheduler.error is not None:
            raise APIError(500, "the decode thread has failed", type_="server_error")
        try:
            scheduler.submit(job)
        except QueueFull:
            raise APIError(503, "the server is busy (queue full); retry later", type_="server_error",
                           headers={"Retry-After": "1"}) from None
        return job, queue

    class Text:
        """Incremental text, the reasoning (before </think>) apart from the answer."""

        def __init__(self, thinking: bool, stops=()):
            self.stops = stops
            self.reasoning_ids: list[int] = []
            self.answer_ids: list[int] = []
            self.in_reasoning = thinking
            self.sent = {"reasoning": "", "answer": ""}

        def add(self, ids: list[int], final: bool = False) -> dict:
            """New text of each part. The answer holds back a tail that may begin a stop string."""
            for t in ids:
                if t == model.think_end:
                    self.in_reasoning = False
                if t in think:
                    continue
                (self.reasoning_ids if self.in_reasoning else self.answer_ids).append(t)
            out = {}
            for part, toks in (("reasoning", self.reasoning_ids), ("answer", self.answer_ids)):
                text = model.tokenizer.decode(toks, skip_special_tokens=True)
                if text.endswith("\ufffd") and not final:
                    continue
                if part == "answer":
                    text = cut_at_stop(text, self.stops)
                    if not final:
                        text = text[: len(text) - self._held(text)]
                if len(text) > len(self.sent[part]):
                    out[part] = text[len(self.sent[part]):]
                    self.sent[part] = text
            return out

        def _held(self, text: str) -> int:
            """Length of the longest suffix of text that is a proper prefix of a stop string."""
            best = 0
            for s in self.stops:
                for n in range(min(len(s) - 1, len(text)), best, -1):
                    if text.endswith(s[:n]):
                        best = n
                        break
            return best

        def final(self) -> tuple[str, str]:
            ans = model.tokenizer.decode(self.answer_ids, skip_special_tokens=True)
            rea = model.tokenizer.decode(self.reasoning_ids, skip_special_tokens=True)
            return rea.strip(), cut_at_stop(ans, self.stops)

    def finish_reason(row) -> str:
        return {"length": "length"}.get(row.finish_reason, "stop")

    async def handle(request: Request, kind: str):
        body = await read_json(request)
        prompt_ids, cfg, stream, include_usage = parse_request(body, kind, model, settings)
        job, queue = submit(prompt_ids, cfg)
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if kind == "chat" else "text_completion"
        text = Text(model.is_thinking, cfg.sampling.stop)

        def usage(row, soft):
            return {"prompt_tokens": len(prompt_ids), "completion_tokens": len(row.token_ids),
                    "total_tokens": len(prompt_ids) + len(row.token_ids), "soft_steps": soft}

        if not stream:
            soft, deadline = 0, time.monotonic() + settings.timeout
            try:
                while True:
                    ev, a, b = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
                    if ev == "done":
                        row = a
                        break
                    text.add(a)
                    soft += b
            except asyncio.TimeoutError:
                scheduler.cancel(job.id)
                raise APIError(504, f"the request did not finish within {settings.timeout:.0f} s",
                               type_="timeout_error") from None
            except asyncio.CancelledError:
                scheduler.cancel(job.id)
                raise
            if row.finish_reason == "error":
                raise APIError(500, "the decode thread has failed", type_="server_error")
            reasoning, answer = text.final()
            if kind == "chat":
                msg = {"role": "assistant", "content": answer}
                if model.is_thinking:
                    msg["reasoning_content"] = reasoning
                choice = {"index": 0, "message": msg, "finish_reason": finish_reason(row)}
            else:
                choice = {"index": 0, "text": answer, "finish_reason": finish_reason(row), "logprobs": None}
                if model.is_thinking:
                    choice["reasoning_content"] = reasoning
            return JSONResponse({"id": rid, "object": obj, "created": created, "model": settings.model_name,
                                 "choices": [choice], "usage": usage(row, soft),
                                 "selar": {"method": cfg.method, "finish_reason": row.finish_reason}})

        async def events():
            chunk_obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
            done = False
            soft = 0

            def chunk(delta=None, finish=None, **extra):
                if kind == "chat":
                    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
                else:
                    choice = {"index": 0, "text": (delta or {}).get("content", ""), "finish_reason": finish}
                    if delta and "reasoning_content" in delta:
                        choice["reasoning_content"] = delta["reasoning_content"]
                return "data: " + json.dumps({"id": rid, "object": chunk_obj, "created": created,
                                              "model": settings.model_name, "choices": [choice], **extra}) + "\n\n"
            try:
                if kind == "chat":
                    yield chunk({"role": "assistant", "content": ""})
                deadline = time.monotonic() + settings.timeout
                while True:
                    try:
                        ev, a, b = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
                    except asyncio.TimeoutError:
                        yield "data: " + json.dumps({"error": {"message": "timeout", "type": "timeout_error"}}) + "\n\n"
                        return
                    final = ev == "done"
                    parts = text.add([] if final else a, final=final)
                    if parts.get("reasoning"):
                        yield chunk({"reasoning_content": parts["reasoning"]})
                    if parts.get("answer"):
                        yield chunk({"content": parts["answer"]})
                    if final:
                        done = True
                        row = a
                        break
                    soft += b
                yield chunk(finish=finish_reason(row))
                if include_usage:
                    yield "data: " + json.dumps({"id": rid, "object": chunk_obj, "created": created,
                                                 "model": settings.model_name, "choices": [],
                                                 "usage": usage(row, soft)}) + "\n\n"
                yield "data: [DONE]\n\n"
            finally:
                if not done:  # the client went away (or timed out): free its row
                    scheduler.cancel(job.id)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await handle(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, "completion")

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "selar"}]}

    @app.get("/health")
    async def health():
        if scheduler.error is not None:
            return error(500, "the decode thread has failed", type_="server_error")
        return {"status": "ok", "model": settings.model_name, "active": scheduler.active,
                "queued": len(scheduler.pending)}

    return app
