"""What the decode thread tells the rest of the server: the `Fault` a job's client is told when
its session failed, and the `Snapshot` of the scheduler's state that /health and /metrics read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import CapacityError


@dataclass(frozen=True)
class Fault:
    """What a job's client is told when its session faulted."""

    status: int  # 500: a server fault; 507: a capacity limit (retry later); 503: shutting down
    message: str
    retry_after: Optional[int] = None

    @property
    def type(self) -> str:
        return "server_error" if self.status == 500 else "capacity_error" if self.status == 507 else "unavailable"


def classify(e: BaseException) -> Fault:
    name = type(e).__name__
    if isinstance(e, (CapacityError, MemoryError)) or name == "OutOfMemoryError":
        return Fault(
            507, f"the server ran out of capacity for this request ({name}: {str(e)[:200]}); retry later", retry_after=5
        )
    return Fault(500, f"the server failed while decoding this request ({name}); other requests are not affected")


SHUTDOWN = Fault(503, "the server is shutting down; retry later", retry_after=5)


@dataclass(frozen=True)
class Snapshot:
    """The scheduler's state after a cycle: counts only, safe to read from any thread."""

    running: int = 0  # rows in decode sessions
    prefilling: int = 0  # rows whose prefill runs in chunks
    queued: int = 0
    sessions: int = 0
    jobs: int = 0  # admitted jobs (running + prefilling)
    per_job_state: int = 0  # entries of the per-job tables (where, stop checks); 0 when idle
    tokens: int = 0  # tokens emitted since start
    soft: int = 0  # of them, soft steps
    tokens_per_s: float = 0.0  # over the last ~10 s
    faults: int = 0  # sessions faulted since start
    capacity_faults: int = 0  # of them, capacity limits
    failed_rows: int = 0  # rows failed by faults
    consecutive_faults: int = 0
    last_fault: str = ""
    alive: bool = True
    healthy: bool = True
    cause: str = ""  # why not healthy
