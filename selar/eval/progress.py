"""Progress of an eval run: problems done, accuracy so far, tokens/s and ETA (a rich bar on a
terminal, one line per update in a log)."""

from __future__ import annotations

import sys
import time
from typing import Any, Optional


def rich_bar() -> Any:
    """A rich progress bar on stderr: the task's name, the bar, done/total, a status text, ETA."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    return Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


class _Bar:
    """A context that draws `self.bar` (a rich bar, or None off a terminal) while it is open."""

    bar: Any = None

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *a) -> None:
        if self.bar:
            self.bar.__exit__(*a)


class Progress(_Bar):
    def __init__(self, total: int, done: int, enabled: bool = True, stats: Optional[dict] = None):
        self.total, self.done, self.enabled = total, done, enabled
        self.stats_ref = stats if stats is not None else {"correct": 0, "n": 0, "tokens": 0, "seconds": 0.0}
        self.t0 = time.perf_counter()
        self.start_done, self.tokens = done, 0
        self.bar: Any = None
        if enabled and sys.stderr.isatty():
            self.bar = rich_bar()
            self.task = self.bar.add_task("eval", total=total, completed=done, info="")

    def update(self, n: int, tokens: int) -> None:
        s = self.stats_ref
        self.done += n
        self.tokens += tokens
        acc = s["correct"] / s["n"] if s["n"] else 0.0
        tps = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        if self.bar:
            self.bar.update(self.task, advance=n, info=f"acc {acc:.1%} | {tps:.1f} tok/s")
        elif self.enabled:  # a log, not a terminal: one line per batch
            rate = (self.done - self.start_done) / max(time.perf_counter() - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0.0
            print(
                f"eval {self.done}/{self.total} | acc {acc:.1%} | {tps:.1f} tok/s | ETA {eta / 60:.1f} min",
                file=sys.stderr,
                flush=True,
            )


class StepBar(_Bar):
    """Progress of a long loop of steps (training): a rich bar with the phase, steps done, a short
    status (losses, sampled accuracy, steps/s) and ETA on a terminal. Off a terminal it draws
    nothing: the loop's own log lines, one per interval, are the log-friendly record.

    Use as a context manager; `tick(phase, step, total, info)` after every step, and `log(line)` to
    print a line above the bar (or to stderr without one)."""

    def __init__(self, enabled: bool = True):
        self.bar: Any = None
        self.task: Any = None
        self.phase = ""
        self.t0 = time.perf_counter()
        if enabled and sys.stderr.isatty():
            self.bar = rich_bar()

    def tick(self, phase: str, step: int, total: int, info: str = "") -> None:
        if self.bar is None:
            return
        if phase != self.phase or self.task is None:
            if self.task is not None:
                self.bar.update(self.task, visible=False)
            self.phase, self.t0 = phase, time.perf_counter()
            self.task = self.bar.add_task(phase, total=total, info="")
        rate = step / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(self.task, completed=step, total=total, info=f"{info} | {rate:.1f} steps/s".lstrip(" |"))

    def log(self, line: str) -> None:
        if self.bar is not None:
            self.bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)
