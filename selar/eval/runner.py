"""`selar eval`: batched, resumable, shardable benchmark runs.

Every finished (problem, method, sample) is appended to the results file and flushed at once.
Work is cut into batches fixed by the config alone, every row is seeded by (seed, dataset,
problem, sample), so a resumed run recomputes exactly what an uninterrupted one would have:
the results file of a killed-and-resumed run is identical to that of an uninterrupted run.
Timing goes to a separate file (`timing*.jsonl`) so that results stay reproducible.

The config is `config.EvalConfig`, the run directory's files `rundir`, the protocol's defaults
(prompt, per-dataset options, token limits, answer guard) `protocol`; this module schedules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from ..api import format_prompt
from ..engines.base import engines_with
from ..errors import ConfigError
from ..methods import make_config
from . import datasets as ds
from . import protocol
from .calibrate import AUTO, calibrate_tau
from .config import EvalConfig
from .grading import GradingError, check_gold, grade
from .progress import Progress
from .rundir import RunDirError, git_commit, prepare_dir, read_results, shard_suffix, versions, write_json

__all__ = ["EvalConfig", "RunDirError", "read_results", "run_eval", "row_seed", "load_problems", "plan"]

CALIBRATION_PROMPTS = 32  # tau=auto: prompts of the dataset decoded to calibrate it
CALIBRATION_TOKENS = 2048  # ... each for at most this many tokens
Key = tuple[str, str, str, int]  # (dataset, problem id, method, sample)


def row_seed(seed: int, dataset: str, pid: str, sample: int) -> int:
    """The sampling seed of one (problem, sample): the same for every method (paired samples)."""
    h = hashlib.sha256(f"{seed}\x1f{dataset}\x1f{pid}\x1f{sample}".encode()).digest()
    return int.from_bytes(h[:7], "big")


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
        for p in out[name]:  # a gold that cannot be graded against fails now, not after the decoding
            try:
                check_gold(p.answer, p.kind)
            except GradingError as e:
                raise GradingError(f"{name}, problem {p.id}: {e}") from None
    return out


def plan(cfg: EvalConfig, problems: dict[str, list[ds.Problem]]) -> list[tuple[str, str, list[tuple[ds.Problem, int]]]]:
    """Batches (dataset, method, [(problem, sample)]), fixed by the config alone."""
    batches = []
    for name, probs in problems.items():
        items = [(p, s) for p in probs for s in range(cfg.samples)]
        for method in cfg.methods:
            for b in range(0, len(items), cfg.batch_size):
                batches.append((name, method, items[b : b + cfg.batch_size]))
    return batches


def _load_model(cfg: EvalConfig, datasets: list[str]):
    """Load the model sized for the longest token limit. The limit depends on whether it is a
    thinking model, known only once loaded: an engine that sizes its cache up front (llama.cpp,
    vLLM) is loaded again, larger, when a thinking model's long defaults do not fit."""
    from ..engines import load_model, load_options

    def longest(thinking: bool) -> int:
        return max(cfg.method_options(d, m, thinking=thinking)["max_new_tokens"] for d in datasets for m in cfg.methods)

    model = load_model(
        cfg.model, dtype=cfg.dtype, engine=cfg.engine, **load_options(cfg.engine, cfg.batch_size, longest(False))
    )
    big = load_options(cfg.engine, cfg.batch_size, longest(True))
    if model.is_thinking and big != load_options(cfg.engine, cfg.batch_size, longest(False)):
        model.close()
        model = load_model(cfg.model, dtype=cfg.dtype, engine=cfg.engine, **big)
    return model


def run_options(
    cfg: EvalConfig, model, datasets, problems=None, calibration: dict | None = None
) -> dict[tuple[str, str], dict]:
    """The options each (dataset, method) runs with on this model; tau=auto calibrated on the
    dataset's first prompts (`calibrate`), or taken from `calibration` (a resumed run's)."""
    guard = protocol.model_facts(model)["guard"]
    if not guard and any(cfg.user_options(m).get("soft_scope") == protocol.GUARDED_SCOPE for m in cfg.methods):
        able = " or ".join(engines_with("answer_guard"))
        raise ConfigError(
            f"soft_scope={protocol.GUARDED_SCOPE} (the answer guard): the {model.engine} engine cannot run it; "
            f"use soft_scope=all or the {able} engine"
        )
    opts = {(d, m): cfg.method_options(d, m, **protocol.model_facts(model)) for d in datasets for m in cfg.methods}
    if any(o.get("force_answer_at") for o in opts.values()):
        model.require("force_answer", "force_answer_at (the answer forced at a token budget)")
    for (d, m), o in opts.items():
        if o.get("tau") != AUTO:
            continue
        key = f"{d}/{m}"
        if calibration is not None and key in (calibration or {}):
            res = calibration[key]
        else:
            probs = (problems or {}).get(d, [])[:CALIBRATION_PROMPTS]
            ids = [format_prompt(model, protocol.render_prompt(p.question, cfg.template)) for p in probs]
            o_cal = {k: v for k, v in o.items() if k != "force_answer_at"}  # tau's soft share: free decoding
            o_cal["max_new_tokens"] = min(o["max_new_tokens"], CALIBRATION_TOKENS)
            seeds = [row_seed(cfg.seed, d, p.id, 0) for p in probs]
            res = calibrate_tau(model, m, ids, seeds, o_cal, cfg.batch_size)
        if calibration is not None:
            calibration[key] = res
        o["tau"] = res["tau"]
    return opts


def run_eval(
    cfg: EvalConfig, out_dir: str, resume: bool = False, force: bool = False, model=None, progress: bool = True
) -> Path:
    """Run (or continue) an evaluation; returns the results file."""
    out = Path(out_dir)
    run_json, results_path = prepare_dir(out, cfg, resume, force)
    problems = load_problems(cfg)  # before the slow model load: bad data fails fast
    done = {(r["dataset"], r["problem_id"], r["method"], r["sample"]) for r in read_results(results_path, repair=True)}
    if model is None:
        model = _load_model(cfg, list(problems))
    calibration: dict = json.loads(run_json.read_text()).get("calibration", {}) if run_json.is_file() else {}
    options = run_options(cfg, model, problems, problems, calibration)
    tmpl = model.tokenizer.chat_template if getattr(model.tokenizer, "chat_template", None) else None
    meta = {
        "config": dataclasses.asdict(cfg),
        "fingerprint": cfg.results_fingerprint(),
        "model": {
            "name": cfg.model,
            "source": model.source,
            "engine": model.engine,
            "dtype": str(model.dtype),
            "device": str(model.device),
            "thinking": model.is_thinking,
        },
        "protocol": {
            "version": protocol.VERSION,
            "prompt_template": cfg.template,
            "chat_template_sha256": protocol.prompt_hash(tmpl) if isinstance(tmpl, str) else None,
            "paper_options": protocol.PAPER_OPTIONS,
        },
        "method_options": {f"{d}/{m}": o for (d, m), o in options.items()},
        "calibration": calibration,  # tau=auto: the chosen tau per dataset/method and what it measured
        "versions": versions(),
        "git_commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(run_json, meta)

    total = sum(len(probs) for probs in problems.values()) * cfg.samples * len(cfg.methods)
    timing_path = out / f"timing{shard_suffix(cfg)}.jsonl"
    stats = {"correct": 0, "n": 0, "tokens": 0, "seconds": 0.0}
    prog = Progress(total, len(done), enabled=progress, stats=stats)
    with open(results_path, "a", encoding="utf-8") as res_f, open(timing_path, "a", encoding="utf-8") as tim_f, prog:

        def record(name: str, method: str, p: ds.Problem, s: int, r) -> None:
            """Append one finished (problem, method, sample), flushed at once."""
            closed = model.think_end in r.token_ids if model.is_thinking else None  # reasoning closed?
            ok, pred = grade(r.text, p.answer, p.kind, reasoning_open=closed is False)
            rec = {
                "dataset": name,
                "problem_id": p.id,
                "method": method,
                "sample": s,
                "correct": ok,
                "pred": pred,
                "gold": p.answer,
                "num_tokens": r.num_tokens,
                "num_soft_steps": r.num_soft_steps,
                "finish_reason": r.finish_reason,
            }
            if closed is not None:
                rec["think_end"] = closed
            if r.forced_at is not None:  # force_answer_at: this row's answer was forced at its budget
                rec["forced_at"] = r.forced_at
            rec.update({"prompt": r.prompt, "text": r.text})
            res_f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            res_f.flush()
            stats["correct"] += ok
            stats["n"] += 1

        def timing(name: str, method: str, rows: int, tokens: int, seconds: float) -> None:
            stats["tokens"] += tokens
            stats["seconds"] += seconds
            tim_f.write(
                json.dumps(
                    {"dataset": name, "method": method, "rows": rows, "tokens": tokens, "seconds": round(seconds, 3)}
                )
                + "\n"
            )
            tim_f.flush()

        run = _run_fixed if cfg.schedule == "fixed" or not model.capabilities.stepwise else _run_continuous
        run(cfg, model, problems, options, done, record, timing, prog)  # an engine with its own scheduler: fixed
    return results_path


def _run_fixed(
    cfg: EvalConfig, model, problems, options, done: set, record: Callable, timing: Callable, prog: Progress
) -> None:
    """Batches fixed by the config: a partly done batch is recomputed whole, so a resumed run is
    bit-identical to an uninterrupted one whatever the precision."""
    from ..api import generate

    for name, method, items in plan(cfg, problems):
        if all((name, p.id, method, s) in done for p, s in items):
            continue
        t0 = time.perf_counter()
        res = generate(
            model,
            [protocol.render_prompt(p.question, cfg.template) for p, _ in items],
            method,
            batch_size=len(items),
            seeds=[row_seed(cfg.seed, name, p.id, s) for p, s in items],
            **options[(name, method)],
        )
        for (p, s), r in zip(items, res):
            if (name, p.id, method, s) not in done:
                record(name, method, p, s, r)
        timing(name, method, len(items), sum(r.num_tokens for r in res), time.perf_counter() - t0)
        prog.update(len(items), sum(r.num_tokens for r in res))


def _run_continuous(
    cfg: EvalConfig, model, problems, options, done: set, record: Callable, timing: Callable, prog: Progress
) -> None:
    """Continuous batching (`selar.decode.run_continuous`): a finished row is replaced by the next
    problem at once, so the batch stays full instead of waiting for its longest row (much faster
    on long-tailed lengths). Rows are seeded alone, so results do not depend on the schedule up
    to the batch-size dependence of reduced-precision kernels (none in float32)."""
    from ..api import format_prompt, make_result
    from ..decode import new_session, run_continuous

    for name, probs in problems.items():
        for method in cfg.methods:
            items = [(p, s) for p in probs for s in range(cfg.samples) if (name, p.id, method, s) not in done]
            if not items:
                continue
            gcfg = make_config(method, **options[(name, method)])
            texts = [protocol.render_prompt(p.question, cfg.template) for p, _ in items]
            ids = [format_prompt(model, t) for t in texts]
            seeds = [row_seed(cfg.seed, name, p.id, s) for p, s in items]
            t0, tokens = time.perf_counter(), 0
            model.expect_work(len(ids) * gcfg.sampling.max_new_tokens)  # a long job: compile="auto" compiles
            for row in run_continuous(new_session(model, gcfg), ids, seeds, cfg.batch_size):
                p, s = items[row.id]
                r = make_result(model, gcfg, texts[row.id], ids[row.id], row)
                record(name, method, p, s, r)
                tokens += r.num_tokens
                prog.update(1, r.num_tokens)
            timing(name, method, len(items), tokens, time.perf_counter() - t0)
