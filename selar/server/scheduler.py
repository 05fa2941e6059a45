"""The server's decode thread: continuous batching over `DecodeSession`s.

Requests that arrive while others run join their session at the next step and leave it when
done. Requests with different methods or sampling settings run in separate sessions, stepped
in turn. `max_batch` bounds the rows decoding or prefilling at once; `max_queue` the requests
waiting. A prompt longer than `prefill_chunk` tokens is prefilled a chunk per cycle between
decode steps, when the engine can (see `prefill`).

Faults stay in their session: an exception while prefilling or stepping a session fails that
session's rows only (each job gets a `Fault`: 500, or 507 for a capacity limit), frees them and
their cache, and the thread goes on with the other sessions. `fault_limit` faults in a row (no
row finishing normally in between) make the scheduler unhealthy until a row finishes again.
The web server reads the scheduler's state only through `snapshot`, which the decode thread
replaces after every cycle.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Optional, cast

import torch

from ..config import SAMPLING_FIELDS, GenerationConfig, stop_tail
from ..decode import DecodeSession, RowOutput, new_session
from ..text import stop_checker
from .health import SHUTDOWN, Fault, Snapshot, classify
from .prefill import Prefilled, chunks_for

log = logging.getLogger("selar.server")
_ids = itertools.count(1)


class QueueFull(Exception):
    pass


def group_key(cfg: GenerationConfig) -> str:
    """Requests with equal keys can share a session (seed, budget and stop strings are per row).
    Built from the fields themselves: a config rebuilt with a stand-in budget would be validated
    (min_new_tokens > max_new_tokens raised for every request with min_new_tokens >= 2)."""
    shared = {f: getattr(cfg.sampling, f) for f in SAMPLING_FIELDS if f not in ("seed", "max_new_tokens", "stop")}
    return repr((cfg.method, cfg.options, shared))


@dataclass(eq=False)
class Job:
    prompt_ids: list[int]
    config: GenerationConfig
    # (new token ids, soft steps among them), from the decode thread; None: not streamed
    on_tokens: Optional[Callable[[list[int], int], object]]
    on_done: Callable[[RowOutput], object]  # called once, from the decode thread (or from `cancel`)
    request_id: str = ""
    id: int = field(default_factory=lambda: next(_ids))
    fault: Optional[Fault] = None  # set before on_done when the row ended in a fault
    key: str = ""

    def __post_init__(self) -> None:
        self.key = self.key or group_key(self.config)


@dataclass(eq=False)
class _Prefill:
    job: Job
    chunks: Generator
    left: int  # next() calls to go, the last one joining the row to its session


class Scheduler:
    def __init__(
        self, model, max_batch: int = 32, max_queue: int = 256, prefill_chunk: int = 512, fault_limit: int = 3
    ):
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        self.prefill_chunk, self.fault_limit = prefill_chunk, fault_limit
        # shared with the web server, under cv
        self.pending: deque[Job] = deque()
        self.cancels: set[int] = set()
        self.cv = threading.Condition()
        self.running = False
        self.thread: Optional[threading.Thread] = None
        # the decode thread's own
        self.jobs: dict[int, Job] = {}
        self.sessions: dict[str, DecodeSession] = {}
        self.where: dict[int, str] = {}  # job id -> session key
        self.checks: dict[int, Callable] = {}  # job id -> stop-string check
        self.prefills: deque[_Prefill] = deque()
        self.tokens = self.soft = self.faults = self.capacity_faults = self.failed_rows = 0
        self.consecutive_faults, self.last_fault = 0, ""
        self._rate: deque[tuple[float, int]] = deque()
        self.snapshot = Snapshot()

    # -- called from the web server ------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self.cv:
            if not self.running or len(self.pending) >= self.max_queue:
                raise QueueFull()
            self.pending.append(job)
            self.cv.notify()

    def cancel(self, job_id: int) -> None:
        """Drop a job whatever its phase (its client went away); a queued job is dropped at once."""
        with self.cv:
            job = next((j for j in self.pending if j.id == job_id), None)
            if job is not None:
                self.pending.remove(job)
            else:
                self.cancels.add(job_id)
                self.cv.notify()
        if job is not None:
            _call(job.on_done, RowOutput(job.id, [], "cancelled", [], []))

    def start(self) -> None:
        self.running = True
        self.thread = threading.Thread(target=self._run, name="selar-decode", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.cv:
            self.running = False
            self.cv.notify()
        if self.thread:
            self.thread.join(timeout=10)

    @property
    def active(self) -> int:
        return self.snapshot.running

    def state(self) -> Snapshot:
        """The last snapshot, with the queue length as of now."""
        with self.cv:
            queued = len(self.pending)
        return dataclasses.replace(self.snapshot, queued=queued)

    # -- the decode thread -----------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self.cv:
                    if self.running and not (self.pending or self.jobs or self.cancels):
                        self.cv.wait(timeout=0.5)
                    if not self.running:
                        break
                    cancels, self.cancels = self.cancels, set()
                    taken = self._take()
                try:
                    self._cycle(cancels, taken)
                except Exception as e:  # a fault outside any one session: fail what is in flight, go on
                    self._fail(list(self.jobs.values()), e, "the scheduler")
                    self._clear()
                self._publish()
            with self.cv:
                left = list(self.pending) + list(self.jobs.values())
                self.pending.clear()
            for job in left:
                self._finish(job, RowOutput(job.id, [], "cancelled", [], []), SHUTDOWN)
            self._clear()
            self._publish(alive=False)

    def _take(self) -> list[Job]:
        """Pending jobs to admit now (under cv): while rows are free, and short prompts up to about
        one chunk of prefill tokens per cycle (long ones are prefilled in chunks)."""
        room, budget, taken = self.max_batch - len(self.jobs), self.prefill_chunk, list[Job]()
        while self.pending and room > 0:
            n = len(self.pending[0].prompt_ids)
            short = not self.prefill_chunk or n <= self.prefill_chunk
            if self.prefill_chunk and short and taken and budget - n < 0:
                break
            taken.append(self.pending.popleft())
            room -= 1
            budget -= n if short else 0
        return taken

    def _cycle(self, cancels: set[int], taken: list[Job]) -> None:
        for jid in cancels:
            self._cancel(jid)
        self._admit(taken)
        self._prefill_step()
        for key, sess in list(self.sessions.items()):
            if sess.size:
                self._step(key, sess)
        busy = {self.where[j] for j in self.where} | {p.job.key for p in self.prefills}
        for key in [k for k, s in self.sessions.items() if not s.size and k not in busy]:
            del self.sessions[key]

    def _session(self, job: Job) -> DecodeSession:
        if job.key not in self.sessions:
            self.sessions[job.key] = new_session(
                self.model, job.config, on_step=self._on_step, stop_check=self._stop_check
            )
        return self.sessions[job.key]

    def _admit(self, taken: list[Job]) -> None:
        groups: dict[str, list[Job]] = {}
        for job in taken:
            self.jobs[job.id] = job
            if job.config.sampling.stop:
                self.checks[job.id] = stop_checker(self.model.tokenizer, job.config.sampling.stop)
            try:
                sess = self._session(job)
            except Exception as e:
                self._fail([job], e, "a new session")
                continue
            n = len(job.prompt_ids)
            chunks = chunks_for(sess.engine) if self.prefill_chunk and n > self.prefill_chunk else None
            if chunks is not None:
                self.prefills.append(
                    _Prefill(job, chunks([job.prompt_ids], self.prefill_chunk), -(-n // self.prefill_chunk))
                )
            else:
                groups.setdefault(job.key, []).append(job)
        for key, jobs in groups.items():
            self._add(key, jobs)

    def _add(self, key: str, jobs: list[Job], stand_in: Optional[Prefilled] = None) -> None:
        """Rows join their session (prefilled now, or by `stand_in`); a fault fails the session."""
        sess = self.sessions.get(key)
        try:
            if sess is None:
                sess = self._session(jobs[0])
            inner = sess.engine
            sess.engine = cast(Any, stand_in or inner)  # the stand-in has `add` only; that is all add() uses
            try:
                sess.add(
                    [j.prompt_ids for j in jobs],
                    [j.id for j in jobs],
                    [j.config.sampling.seed for j in jobs],
                    [j.config.sampling.max_new_tokens for j in jobs],
                    [stop_tail(j.config.sampling.stop) if j.id in self.checks else 0 for j in jobs],
                )
            finally:
                sess.engine = inner
        except Exception as e:
            self._fault_session(key, e, jobs)
            return
        for j in jobs:
            self.where[j.id] = key

    def _prefill_step(self) -> None:
        """One chunk of the oldest chunked prefill; its last chunk joins the row to its session."""
        if not self.prefills:
            return
        task = self.prefills[0]
        if task.left > 1:
            try:
                next(task.chunks)
                task.left -= 1
            except Exception as e:  # the running rows are untouched: only this job fails
                self.prefills.popleft()
                task.chunks.close()
                self._fail([task.job], e, "a chunked prefill")
            return
        self.prefills.popleft()
        self._add(task.job.key, [task.job], Prefilled(task.chunks))

    def _step(self, key: str, sess: DecodeSession) -> None:
        try:
            finished = sess.step()
        except Exception as e:
            self._fault_session(key, e)
            return
        for row in finished:
            job = self.jobs.get(row.id)
            if job is not None:
                if row.finish_reason != "cancelled":
                    self.consecutive_faults = 0
                self._finish(job, row)

    def _cancel(self, jid: int) -> None:
        task = next((p for p in self.prefills if p.job.id == jid), None)
        if task is not None:
            self.prefills.remove(task)
            task.chunks.close()
            self._finish(task.job, RowOutput(jid, [], "cancelled", [], []))
            return
        key = self.where.get(jid)
        if key is not None and key in self.sessions:
            self.sessions[key].cancel(jid)

    def _stop_check(self, job_id: int, ids: list[int]) -> bool:
        check = self.checks.get(job_id)
        return bool(check and check(ids))

    def _on_step(self, ids, tokens, soft) -> None:
        rows, toks, softs = ids.tolist(), tokens.tolist(), soft.tolist()
        self.tokens += len(rows)
        self.soft += sum(softs)
        for i, t, s in zip(rows, toks, softs):
            job = self.jobs.get(i)
            if job is not None and job.on_tokens is not None:
                _call(job.on_tokens, [t], int(s))

    # -- faults ------------------------------------------------------------------------------------
    def _fault_session(self, key: str, e: BaseException, extra: tuple | list = ()) -> None:
        """Fail every row of session `key` (and `extra` jobs joining it), free its cache, drop it."""
        victims = [self.jobs[j] for j, k in self.where.items() if k == key and j in self.jobs]
        victims += [j for j in extra if j not in victims]
        for task in [p for p in self.prefills if p.job.key == key]:  # their rows would join its engine
            self.prefills.remove(task)
            task.chunks.close()
            victims.append(task.job)
        sess = self.sessions.pop(key, None)
        if sess is not None:
            try:
                sess.engine.reset()
            except Exception:  # noqa: BLE001 - the engine is dropped anyway
                log.warning("could not reset the engine of a faulted session", exc_info=True)
        method = victims[0].config.method if victims else "?"
        self._fail(victims, e, f"a {method} session")

    def _fail(self, jobs: list[Job], e: BaseException, where: str) -> None:
        fault = classify(e)
        self.faults += 1
        self.capacity_faults += fault.status == 507
        self.failed_rows += len(jobs)
        self.consecutive_faults += 1
        self.last_fault = f"{type(e).__name__}: {str(e)[:300]}"
        log.error(
            "fault in %s (%d rows; requests %s): %s",
            where,
            len(jobs),
            ", ".join(j.request_id or str(j.id) for j in jobs) or "none",
            self.last_fault,
            exc_info=e,
        )
        for job in jobs:
            self._finish(job, RowOutput(job.id, [], "error", [], []), fault)

    def _finish(self, job: Job, row: RowOutput, fault: Optional[Fault] = None) -> None:
        self.jobs.pop(job.id, None)
        self.where.pop(job.id, None)
        self.checks.pop(job.id, None)
        job.fault = fault
        _call(job.on_done, row)

    def _clear(self) -> None:
        for p in self.prefills:
            p.chunks.close()
        for sess in self.sessions.values():
            try:
                sess.engine.reset()
            except Exception:  # noqa: BLE001
                pass
        self.prefills.clear()
        self.sessions.clear()
        self.jobs.clear()
        self.where.clear()
        self.checks.clear()

    def _publish(self, alive: bool = True) -> None:
        now = time.monotonic()
        if not self._rate or now - self._rate[-1][0] >= 0.25:
            self._rate.append((now, self.tokens))
        while len(self._rate) > 2 and now - self._rate[0][0] > 10:
            self._rate.popleft()
        t0, n0 = self._rate[0]
        rate = (self.tokens - n0) / (now - t0) if now - t0 > 0.5 else 0.0
        cause = "" if alive else "the decode thread is not running"
        if alive and self.consecutive_faults >= self.fault_limit:
            cause = f"{self.consecutive_faults} faults in a row while decoding; last: {self.last_fault}"
        with self.cv:
            queued = len(self.pending)
        self.snapshot = Snapshot(
            running=sum(s.size for s in self.sessions.values()),
            prefilling=len(self.prefills),
            queued=queued,
            sessions=len(self.sessions),
            jobs=len(self.jobs),
            per_job_state=len(self.where) + len(self.checks),
            tokens=self.tokens,
            soft=self.soft,
            tokens_per_s=rate,
            faults=self.faults,
            capacity_faults=self.capacity_faults,
            failed_rows=self.failed_rows,
            consecutive_faults=self.consecutive_faults,
            last_fault=self.last_fault,
            alive=alive,
            healthy=not cause,
            cause=cause,
        )


def _call(fn: Callable, *args) -> None:
    """A client's callback; its failure (e.g. a closed event loop) is not the session's fault."""
    try:
        fn(*args)
    except Exception:  # noqa: BLE001
        log.debug("a job callback failed", exc_info=True)
