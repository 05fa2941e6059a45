"""`selar serve` in a subprocess on a free local port, for the server benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Optional

import httpx


@contextmanager
def selar_server(
    model: str, *, max_batch: int, max_queue: int, log: Optional[IO[str]] = None, start_timeout: float = 300
) -> Iterator[tuple[subprocess.Popen, str]]:
    """(the server process, its base URL) once /health answers; stopped on exit. Its output goes to
    `log` (a file) or to this terminal; exits with the log's tail if the server does not start."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "selar", "serve", "--model", model, "--port", str(port)]
    cmd += ["--max-batch", str(max_batch), "--max-queue", str(max_queue)]
    out = {"stdout": log, "stderr": subprocess.STDOUT} if log is not None else {}
    server = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **out)
    try:
        deadline = time.time() + start_timeout
        while time.time() < deadline and server.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            tail = ""
            if log is not None:
                log.seek(0)
                tail = ":\n" + log.read()[-3000:]
            sys.exit("the server did not start" + tail)
        yield server, url
    finally:
        server.terminate()
        server.wait(timeout=30)
