"""The server's decode thread: continuous batching over `DecodeSession`s.

Requests that arrive while others run join their session at the next step and leave it when
done. Requests with different methods or sampling settings run in separate sessions, stepped
in turn. `max_batch` bounds the rows decoding at once; `max_queue` the requests waiting.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..config import GenerationConfig
from ..decode import DecodeSession, RowOutput


class QueueFull(Exception):
    pass


@dataclass
class Job:
    prompt_ids: list[int]
    config: GenerationConfig
    on_tokens: Callable[[list[int], int], None]   # (new token ids, soft steps among them)
    on_done: Callable[[RowOutput], None]
    id: int = field(default_factory=itertools.count(1).__next__)

    def group_key(self) -> str:
        s = dataclasses.replace(self.config.sampling, seed=0, max_new_tokens=1, stop=())
        return repr((self.config.method, self.config.options, s))


class Scheduler:
    def __init__(self, model, max_batch: int = 32, max_queue: int = 256):
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        self.pending: deque[Job] = deque()
        self.jobs: dict[int, Job] = {}
        self.sessions: dict[str, DecodeSession] = {}
        self.where: dict[int, str] = {}   # job id -> session key
        self.cancels: set[int] = set()
        self.cv = threading.Condition()
        self.running = False
        self.thread: Optional[threading.Thread] = None
        self.error: Optional[BaseException] = None

    # -- called from the web server ------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self.cv:
            if len(self.pending) >= self.max_queue:
                raise QueueFull()
            self.pending.append(job)
            self.jobs[job.id] = job
            self.cv.notify()

    def cancel(self, job_id: int) -> None:
        with self.cv:
            self.cancels.add(job_id)
            self.cv.notify()

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
        return sum(s.size for s in self.sessions.values())

    # -- the decode thread -----------------------------------------------------------------------
    def _session(self, job: Job) -> DecodeSession:
        key = job.group_key()
        if key not in self.sessions:
            self.sessions[key] = self.model.new_session(job.config, on_step=self._on_step, stop_check=self._stop_check)
        return self.sessions[key]

    def _stop_check(self, job_id: int, ids: list[int]) -> bool:
        job = self.jobs.get(job_id)
        stops = job.config.sampling.stop if job else ()
        if not stops:
            return False
        tail = self.model.tokenizer.decode(ids[-(max(map(len, stops)) + 16):], skip_special_tokens=True)
        return any(s in tail for s in stops)

    def _on_step(self, ids, tokens, soft) -> None:
        for i, t, s in zip(ids.tolist(), tokens.tolist(), soft.tolist()):
            job = self.jobs.get(i)
            if job is not None:
                job.on_tokens([t], int(s))

    def _admit(self) -> None:
        """Move pending jobs into sessions while there is room (one prefill per session)."""
        groups: dict[str, list[Job]] = {}
        room = self.max_batch - self.active
        with self.cv:
            while self.pending and room > 0:
                job = self.pending.popleft()
                if job.id in self.cancels:
                    self.cancels.discard(job.id)
                    self.jobs.pop(job.id, None)
                    continue
                groups.setdefault(job.group_key(), []).append(job)
                room -= 1
        for key, jobs in groups.items():
            sess = self._session(jobs[0])
            sess.add([j.prompt_ids for j in jobs], [j.id for j in jobs], [j.config.sampling.seed for j in jobs],
                     [j.config.sampling.max_new_tokens for j in jobs], [bool(j.config.sampling.stop) for j in jobs])
            for j in jobs:
                self.where[j.id] = key

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self.cv:
                        while self.running and not self.pending and not self.active:
                            self.cv.wait(timeout=0.5)
                        if not self.running:
                            return
                        cancels, self.cancels = self.cancels, set()
                    for jid in cancels:
                        key = self.where.get(jid)
                        if key is not None and key in self.sessions:
                            self.sessions[key].cancel(jid)
                        elif jid in self.jobs:
                            with self.cv:
                                self.cancels.add(jid)  # still pending: dropped at admission
                    self._admit()
                    for key, sess in list(self.sessions.items()):
                        if not sess.size:
                            continue
                        for row in sess.step():
                            job = self.jobs.pop(row.id, None)
                            self.where.pop(row.id, None)
                            if job is not None:
                                job.on_done(row)
                    for key in [k for k, s in self.sessions.items() if not s.size]:
                        del self.sessions[key]
        except BaseException as e:  # pragma: no cover - reported by /health and to waiting clients
            self.error = e
            for job in list(self.jobs.values()):
                job.on_done(RowOutput(job.id, [], "error", [], []))
            raise
