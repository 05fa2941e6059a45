"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions (with SSE streaming),
/v1/models, /health, /metrics. The decoding method and its options come as extra body fields.

A request's body is read with a deadline, then parsed, validated and tokenised on a worker
thread (`protocol`), so the event loop keeps answering while a long prompt is tokenised. The
job waits for its row in the scheduler; whatever its phase, a client that goes away (or times
out) cancels it, and its row, cache and per-request state are dropped."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..methods import METHODS
from . import schema
from .metrics import CONTENT_TYPE, Metrics
from .protocol import APIError, MethodCheck, Settings, error_body, parse_request
from .scheduler import Job, QueueFull, Scheduler
from .stream import Reply, Text, error_event


def error_response(status: int, message: str, param=None, type_="invalid_request_error", headers=None):
    return JSONResponse(error_body(status, message, param, type_), status_code=status, headers=headers)


def fault_error(job: Job, row) -> APIError:
    """The error of a job whose row did not end normally (a fault, or a shutdown)."""
    f = job.fault
    if f is None:  # cancelled without a fault: only a shutdown cancels a live client's row
        return APIError(
            503,
            "the request was cancelled by the server; retry later",
            type_="unavailable",
            headers={"Retry-After": "5"},
        )
    return APIError(
        f.status, f.message, type_=f.type, headers={"Retry-After": str(f.retry_after)} if f.retry_after else None
    )


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so only a disconnect comes)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(model, scheduler: Scheduler, settings: Settings) -> FastAPI:
    app = FastAPI(
        title="selar",
        version="1",
        docs_url="/docs" if settings.docs else None,
        redoc_url=None,
        description="OpenAI-compatible completions with selective latent reasoning (SeLaR) and its "
        "baselines; the method and its options are extra body fields.",
    )
    schema.install(app, settings)
    metrics = Metrics()
    check = MethodCheck(model)
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="selar-parse")
    app.state.metrics, app.state.scheduler = metrics, scheduler
    app.add_middleware(CountStatus, metrics=metrics)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.type, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return error_response(
            exc.status_code, str(exc.detail), type_="invalid_request_error" if exc.status_code < 500 else "server_error"
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return error_response(400, "invalid request")

    @app.exception_handler(Exception)
    async def _internal(request, exc):  # pragma: no cover - a bug; the server keeps serving
        return error_response(500, f"internal error: {type(exc).__name__}", type_="server_error")

    def check_auth(request: Request) -> None:
        if settings.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode("utf-8", "replace"), settings.api_key.encode()):
            raise APIError(401, "invalid or missing API key", type_="authentication_error")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > settings.max_body_bytes):
            raise APIError(413, f"the request body is larger than {settings.max_body_bytes} bytes")
        body = bytearray()

        async def read() -> None:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > settings.max_body_bytes:
                    raise APIError(413, f"the request body is larger than {settings.max_body_bytes} bytes")

        try:
            await asyncio.wait_for(read(), settings.body_timeout)
        except ClientDisconnect:
            raise APIError(499, "the client closed the request") from None  # for the log and /metrics only
        except asyncio.TimeoutError:
            raise APIError(
                408,
                f"the request body did not arrive within {settings.body_timeout:g} s",
                headers={"Connection": "close"},
            ) from None
        return bytes(body)

    def parse(raw: bytes, kind: str):
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise APIError(400, "the request body is not valid JSON") from None
        return parse_request(body, kind, model, settings, check)

    async def handle(request: Request, kind: str):
        check_auth(request)
        raw = await read_body(request)
        loop = asyncio.get_running_loop()
        parsed = await loop.run_in_executor(pool, parse, raw, kind)
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        reply = Reply(
            kind,
            rid,
            int(time.time()),
            settings.model_name,
            parsed.config.method,
            len(parsed.prompt_ids),
            model.is_thinking,
        )
        text = Text(model, parsed.config.sampling.stop, parsed.prompt_ids)
        if parsed.stream:
            return stream(request, parsed, reply, text)
        done: asyncio.Future = loop.create_future()
        job = Job(
            parsed.prompt_ids,
            parsed.config,
            None,
            lambda row: loop.call_soon_threadsafe(_set, done, row),
            request_id=rid,
        )
        submit(job)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({done, gone}, timeout=settings.timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            scheduler.cancel(job.id)
            raise
        finally:
            gone.cancel()
        if not done.done():  # the client went away, or the request timed out: free its row
            scheduler.cancel(job.id)
            if gone.done() and not gone.cancelled():
                raise APIError(499, "the client closed the request")  # for the log and /metrics only
            raise APIError(504, f"the request did not finish within {settings.timeout:g} s", type_="timeout_error")
        row = done.result()
        if row.finish_reason in ("error", "cancelled"):
            raise fault_error(job, row)
        text.add(row.token_ids, final=True)
        return JSONResponse(reply.body(row, text), headers={"X-Request-Id": rid})

    def submit(job: Job) -> None:
        if not scheduler.snapshot.alive:
            raise APIError(503, "the decode thread is not running", type_="unavailable")
        try:
            scheduler.submit(job)
        except QueueFull:
            raise APIError(
                503, "the server is busy (queue full); retry later", type_="server_error", headers={"Retry-After": "1"}
            ) from None

    def stream(request: Request, parsed, reply: Reply, text: Text) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        job = Job(
            parsed.prompt_ids,
            parsed.config,
            on_tokens=lambda ids, soft: loop.call_soon_threadsafe(queue.put_nowait, ("tokens", ids, soft)),
            on_done=lambda row: loop.call_soon_threadsafe(queue.put_nowait, ("done", row, 0)),
            request_id=reply.id,
        )
        submit(job)
        state = {"finished": False}

        def close() -> None:
            if not state["finished"]:  # the client went away (in any phase), or timed out: free its row
                scheduler.cancel(job.id)

        async def events():
            soft = 0
            try:
                first = reply.first()
                if first:
                    yield first
                deadline = loop.time() + settings.timeout
                while True:
                    try:
                        ev, a, b = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
                    except asyncio.TimeoutError:
                        metrics.stream_errors["timeout_error"] += 1
                        yield error_event(
                            504, f"the request did not finish within {settings.timeout:g} s", "timeout_error"
                        )
                        return
                    if ev == "tokens":
                        soft += b
                        for e in reply.deltas(text.add(a)):
                            yield e
                        continue
                    state["finished"], row = True, a
                    if row.finish_reason in ("error", "cancelled"):  # never a finish_reason "stop"
                        err = fault_error(job, row)
                        metrics.stream_errors[err.type] += 1
                        yield error_event(err.status, err.message, err.type)
                        return
                    for e in reply.deltas(text.add([], final=True)):
                        yield e
                    for e in reply.end(row, soft, parsed.include_usage):
                        yield e
                    return
            finally:
                close()

        return SSE(
            events(), close, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Request-Id": reply.id}
        )

    @app.post("/v1/chat/completions", responses=schema.completion_responses(schema.ChatCompletion))
    async def chat(request: Request):
        """A chat completion (OpenAI's API; `method` and its options as extra fields)."""
        return await handle(request, "chat")

    @app.post("/v1/completions", responses=schema.completion_responses(schema.Completion))
    async def completions(request: Request):
        """A text completion of a prompt (raw by default; `raw: false` applies the chat template)."""
        return await handle(request, "completion")

    @app.get("/v1/models", responses={200: {"model": schema.ModelList}, 401: schema.ERRORS[401]})
    async def models(request: Request):
        check_auth(request)
        return {
            "object": "list",
            "data": [
                {
                    "id": settings.model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "selar",
                    "capabilities": {
                        "methods": [m for m, spec in METHODS.items() if spec.inputs <= model.capabilities.inputs]
                    },
                }
            ],
        }

    @app.get("/health", responses={200: {"model": schema.Health}, 503: schema.ERRORS[503]})
    async def health():
        """200 while the decode thread runs and is not faulting over and over; 503 with the cause."""
        s = scheduler.state()
        if not s.healthy:
            body = error_body(503, f"unhealthy: {s.cause}", None, "unavailable")
            return JSONResponse({**body, "status": "unhealthy", "cause": s.cause}, status_code=503)
        return {
            "status": "ok",
            "model": settings.model_name,
            "active": s.running,
            "queued": s.queued,
            "prefilling": s.prefilling,
            "faults": s.faults,
        }

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
                "description": "Prometheus text format",
            }
        },
    )
    async def prometheus():
        return Response(metrics.render(scheduler.state()), media_type=CONTENT_TYPE)

    return app


class SSE(StreamingResponse):
    """Server-sent events; `on_close` runs however the response ends, even before its first event."""

    def __init__(self, content, on_close, headers=None):
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class CountStatus:
    """ASGI middleware: counts responses by endpoint and status (for /metrics)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.request(scope.get("path", ""), status[0])


def _set(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)
