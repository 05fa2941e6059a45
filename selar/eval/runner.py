"""`selar eval`: batched, resumable, shardable benchmark runs.

Every finished (problem, method, sample) is appended to the results file and flushed at once.
Work is cut into batches fixed by the config alone, every row is seeded by (seed, dataset,
problem, sample), so a resumed run recomputes exactly what an uninterrupted one would have:
the results file of a killed-and-resumed run is identical to that of an uninterrupted run.
Timing goes to a separate file (`timing*.jsonl`) so that results stay reproducible.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional

from ..config import SAMPLING_FIELDS, make_config
from ..errors import ConfigError, SelarError
from ..methods import get_method_spec
from . import datasets as ds
from .grading import grade


class RunDirError(SelarError):
    """The output directory holds a run that this one must not be mixed with."""


@dataclass
class EvalConfig:
    model: str
    datasets: list[str]
    methods: list[str]
    samples: int = 1
    limit: Optional[int] = None
    seed: int = 0
    sets: dict = field(default_factory=dict)        # "option" or "method.option" -> value
    batch_size: int = 8
    dtype: str = "auto"
    hub: bool = False
    data_files: dict = field(default_factory=dict)  # dataset -> path (offline files)
    data: Optional[str] = None                      # your own benchmark file
    fields: dict = field(default_factory=dict)
    num_shards: int = 1
    shard_index: int = 0

    def __post_init__(self) -> None:
        if not self.datasets and not self.data:
            raise ConfigError("give --datasets or --data FILE")
        if not self.methods:
            raise ConfigError("give at least one method")
        for m in self.methods:
            get_method_spec(m)
        for d in self.datasets:
            ds.get_dataset(d)
        if self.samples < 1:
            raise ConfigError(f"samples must be at least 1, got {self.samples}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be at least 1, got {self.limit}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise ConfigError(f"shard index must be in [0, {self.num_shards}), got {self.shard_index}")
        for d in self.dataset_names():
            for m in self.methods:
                self.method_options(d, m)  # validates every --set

    def dataset_names(self) -> list[str]:
        return list(self.datasets) + ([Path(self.data).stem] if self.data else [])

    def method_options(self, dataset: str, method: str) -> dict:
        """Options of one method on one dataset: the paper's per-dataset tau for SeLaR, then --set."""
        spec = get_method_spec(method)
        names = {f.name for f in dataclasses.fields(spec.options)} | set(SAMPLING_FIELDS)
        opts: dict = {}
        if "tau" in names and dataset in ds.DATASETS:
            opts["tau"] = ds.DATASETS[dataset].tau
        for key, value in self.sets.items():
            target, _, opt = key.rpartition(".")
            if target and target != method:
                get_method_spec(target)
                continue
            if opt not in names:
                if target:
                    raise ConfigError(f"method {method} has no option {opt!r}")
                continue
            opts[opt] = value
        unused = [k for k in self.sets if "." not in k and not any(
            k in {f.name for f in dataclasses.fields(get_method_spec(m).options)} | set(SAMPLING_FIELDS)
            for m in self.methods)]
        if unused:
            raise ConfigError(f"option(s) {', '.join(unused)} apply to none of {', '.join(self.methods)}")
        make_config(method, **opts)  # validate
        return opts

    def results_fingerprint(self) -> dict:
        """Everything that changes what a result line holds (batch size included: batches fix
        the numerics in reduced precision)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def shard_suffix(cfg: EvalConfig) -> str:
    return "" if cfg.num_shards == 1 else f"-{cfg.shard_index}-of-{cfg.num_shards}"


def row_seed(seed: int, dataset: str, pid: str, sample: int) -> int:
    """The sampling seed of one (problem, sample): the same for every method (paired samples)."""
    h = hashlib.sha256(f"{seed}\x1f{dataset}\x1f{pid}\x1f{sample}".encode()).digest()
    return int.from_bytes(h[:7], "big")


def read_results(path: Path, repair: bool = False) -> list[dict]:
    """Records of a results file. A torn last line (a killed writer) is skipped with a warning
    and, when `repair`, cut off the file so that appends start on a clean line."""
    if not path.is_file():
        return []
    out: list[dict] = []
    offset = good_end = 0
    for line in path.read_bytes().splitlines(keepends=True):
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not line.endswith(b"\n"):
            warnings.warn(f"{path}: skipping a torn last line (an interrupted run)")
            if repair:
                with open(path, "r+b") as f:
                    f.truncate(good_end)
            break
        if rec is None and line.strip():
            warnings.warn(f"{path}: skipping a malformed line at byte {offset}")
        elif rec is not None:
            out.append(rec)
        offset += len(line)
        good_end = offset
    return out


def _versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for pkg in ("selar", "torch", "transformers", "math-verify", "gguf"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _git_commit() -> Optional[str]:
    try:
        here = Path(__file__).resolve().parent
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if proc.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return proc.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def load_problems(cfg: EvalConfig) -> dict[str, list[ds.Problem]]:
    out = {}
    for name in cfg.datasets:
        out[name] = ds.load(name, hub=cfg.hub, paths=cfg.data_files)
    if cfg.data:
        out[Path(cfg.data).stem] = ds.load_file(cfg.data, cfg.fields)
    for name, probs in out.items():
        if cfg.limit:
            probs = probs[: cfg.limit]
        out[name] = [p for i, p in enumerate(probs) if i % cfg.num_shards == cfg.shard_index]
    return out


def plan(cfg: EvalConfig, problems: dict[str, list[ds.Problem]]) -> list[tuple[str, str, list[tuple[ds.Problem, int]]]]:
    """Batches (dataset, method, [(problem, sample)]), fixed by the config alone."""
    batches = []
    for name, probs in problems.items():
        items = [(p, s) for p in probs for s in range(cfg.samples)]
        for method in cfg.methods:
            for b in range(0, len(items), cfg.batch_size):
                batches.append((name, method, items[b: b + cfg.batch_size]))
    return batches


def prepare_dir(out: Path, cfg: EvalConfig, resume: bool, force: bool) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    sfx = shard_suffix(cfg)
    run_json, results = out / f"run{sfx}.json", out / f"results{sfx}.jsonl"
    if run_json.is_file():
        old = json.loads(run_json.read_text())
        same = old.get("fingerprint") == cfg.results_fingerprint()
        if not same and not force:
            raise RunDirError(f"{out} holds a run with a different config; use another --out, or --force to mix them")
        if same and results.is_file() and not resume and not force:
            raise RunDirError(f"{out} already holds results of this run; add --resume to continue it")
    elif results.is_file() and not force:
        raise RunDirError(f"{results} exists without its run{sfx}.json; use another --out or --force")
    return run_json, results


def run_eval(cfg: EvalConfig, out_dir: str, resume: bool = False, force: bool = False, model=None,
             progress: bool = True) -> Path:
    """Run (or continue) an evaluation; returns the results file."""
    from ..api import generate
    from ..models import load_model

    out = Path(out_dir)
    run_json, results_path = prepare_dir(out, cfg, resume, force)
    problems = load_problems(cfg)  # before the slow model load: bad data fails fast
    done = {(r["dataset"], r["problem_id"], r["method"], r["sample"]) for r in read_results(results_path, repair=True)}
    if model is None:
        model = load_model(cfg.model, dtype=cfg.dtype)
    meta = {"config": dataclasses.asdict(cfg), "fingerprint": cfg.results_fingerprint(),
            "model": {"name": cfg.model, "source": model.source, "dtype": str(model.dtype),
                      "device": str(model.device), "thinking": model.is_thinking},
            "method_options": {f"{d}/{m}": cfg.method_options(d, m) for d in problems for m in cfg.methods},
            "versions": _versions(), "git_commit": _git_commit(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = run_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1, default=str))
    os.replace(tmp, run_json)

    batches = plan(cfg, problems)
    total = sum(len(items) for _, _, items in batches)
    todo = [b for b in batches if any((b[0], p.id, b[1], s) not in done for p, s in b[2])]
    timing_path = out / f"timing{shard_suffix(cfg)}.jsonl"
    stats = {"correct": 0, "n": 0, "tokens": 0, "seconds": 0.0}
    prog = _Progress(total, len(done), enabled=progress)
    with open(results_path, "a", encoding="utf-8") as res_f, open(timing_path, "a", encoding="utf-8") as tim_f, prog:
        for name, method, items in todo:
            opts = cfg.method_options(name, method)
            t0 = time.perf_counter()
            res = generate(model, [p.prompt for p, _ in items], method,
                           seeds=[row_seed(cfg.seed, name, p.id, s) for p, s in items],
                           batch_size=len(items), **opts)
            dt = time.perf_counter() - t0
            for (p, s), r in zip(items, res):
                if (name, p.id, method, s) in done:
                    continue
                ok, pred = grade(r.text, p.answer, p.kind)
                rec = {"dataset": name, "problem_id": p.id, "method": method, "sample": s, "correct": ok,
                       "pred": pred, "gold": p.answer, "num_tokens": r.num_tokens,
                       "num_soft_steps": r.num_soft_steps, "finish_reason": r.finish_reason, "text": r.text}
                res_f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                res_f.flush()
                stats["correct"] += ok
                stats["n"] += 1
            toks = sum(r.num_tokens for r in res)
            stats["tokens"] += toks
            stats["seconds"] += dt
            tim_f.write(json.dumps({"dataset": name, "method": method, "rows": len(items), "tokens": toks,
                                    "seconds": round(dt, 3)}) + "\n")
            tim_f.flush()
            prog.update(len(items), stats)
    return results_path


class _Progress:
    """Problems done, accuracy so far, tokens/s and ETA."""

    def __init__(self, total: int, done: int, enabled: bool = True):
        self.total, self.done, self.enabled = total, done, enabled
        self.t0 = time.perf_counter()
        self.start_done = done
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.bar = Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self.task = self.bar.add_task("eval", total=total, completed=done, info="")

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *a):
        if self.bar:
            self.bar.__exit__(*a)

    def update(self, n: int, s: dict) -> None:
        self.done += n
        acc = s["correct"] / s["n"] if s["n"] else 0.0
        tps = s["tokens"] / s["seconds"] if s["seconds"] else 0.0
        if self.bar:
            self.bar.update(self.task, advance=n, info=f"acc {acc:.1%} | {tps:.1f} tok/s")
        elif self.enabled:  # a log, not a terminal: one line per batch
            rate = (self.done - self.start_done) / max(time.perf_counter() - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0.0
            print(f"eval {self.done}/{self.total} | acc {acc:.1%} | {tps:.1f} tok/s | ETA {eta / 60:.1f} min",
                  file=sys.stderr, flush=True)
