"""An OpenAI-compatible HTTP server with continuous batching (`selar serve`): `protocol` checks
requests at the door, `scheduler` runs them on one decode thread (faults contained per session,
long prompts prefilled in chunks), `stream` turns rows into response bodies and server-sent
events, `schema` describes it all in OpenAPI, `metrics` for Prometheus, `app` the routes."""

from __future__ import annotations

import socket
import threading
import time
from typing import Optional

from .app import create_app
from .health import Fault, Snapshot
from .protocol import APIError, Settings, parse_request
from .scheduler import Job, Scheduler


class RunningServer:
    """A server on a background thread (for tests and notebooks)."""

    def __init__(self, server, thread: threading.Thread, scheduler: Scheduler, url: str):
        self.server, self.thread, self.scheduler, self.url = server, thread, scheduler, url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.scheduler.stop()


def build(
    model, settings: Settings, max_batch: int = 32, max_queue: int = 256, prefill_chunk: int = 512, fault_limit: int = 3
):
    """(app, scheduler): the ASGI app and its started decode thread."""
    scheduler = Scheduler(
        model, max_batch=max_batch, max_queue=max_queue, prefill_chunk=prefill_chunk, fault_limit=fault_limit
    )
    scheduler.start()
    return create_app(model, scheduler, settings), scheduler


def start_in_thread(
    model,
    settings: Optional[Settings] = None,
    host: str = "127.0.0.1",
    port: int = 0,
    max_batch: int = 32,
    max_queue: int = 256,
    prefill_chunk: int = 512,
    fault_limit: int = 3,
) -> RunningServer:
    import uvicorn

    settings = settings or Settings(model_name=model.name)
    app, scheduler = build(model, settings, max_batch, max_queue, prefill_chunk, fault_limit)
    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    return RunningServer(server, thread, scheduler, f"http://{host}:{port}")


__all__ = [
    "APIError",
    "Settings",
    "Scheduler",
    "Snapshot",
    "Job",
    "Fault",
    "create_app",
    "parse_request",
    "build",
    "start_in_thread",
    "RunningServer",
]
