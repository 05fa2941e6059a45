"""The runs a report merges: the records and timings of every results file, with the settings its
run.json records. Shards and resumed parts of one run merge; runs of one method made with
different settings are kept apart as rows labelled with the settings that differ
(`selar@tau=0.3,temperature=0`), and each row is compared with the `cot` row of the same model,
engine, dtype, prompt and protocol. A run with the answer forced at a token budget
(`--set force_answer_at=B`) always says so in its label (`selar@force_answer_at=256`), and is
compared with the cot row forced at the same budget."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import SelarError
from ..methods import make_config
from .config import sets_for
from .rundir import read_results

BASELINE = "cot"
# what a row's settings hold beside the --set options that apply to its method (not the shard,
# limit, samples, datasets or batching: those decide which records a run has, not what they hold)
RUN_FIELDS = ("model", "engine", "dtype", "seed", "prompt_template", "protocol")
# what a row shares with the cot row it is compared with
PAIRED_FIELDS = ("model", "engine", "dtype", "prompt_template", "protocol")
FORCE = "force_answer_at"  # a run's budget where the answer is forced (0 or unset: none), always labelled
_UNSET = object()


@dataclass
class Source:
    """One results file, the argument that named it, its run.json (None when missing) and timing file."""

    results: Path
    arg: str
    meta: Optional[dict]
    timing: Optional[Path]


@dataclass
class Runs:
    records: list[dict]  # deduplicated by (dataset, problem, row label, sample); "method" is the row label
    timings: list[dict]
    baselines: dict[tuple[str, str], Optional[str]]  # (dataset, row label) -> its cot row's label
    models: list[str]  # "name (engine, dtype)" of each model, or why it is not known
    split: dict[str, list[str]]  # method -> its row labels, for methods run with different settings
    calibration: dict[str, dict] = field(default_factory=dict)  # "dataset/method" -> tau=auto's result
    # row label -> (the label without its budget, force_answer_at), for rows whose answer was forced
    forced: dict[str, tuple[str, int]] = field(default_factory=dict)


def sources(dirs: list[str]) -> list[Source]:
    out = []
    for d in dirs:
        p = Path(d)
        if not p.exists():
            raise SelarError(f"no such run directory or results file: {d}")
        for f in sorted(p.glob("results*.jsonl")) if p.is_dir() else [p]:
            named = f.name.startswith("results") and f.name.endswith(".jsonl")
            sfx = f.name[len("results") : -len(".jsonl")] if named else None
            meta = None
            if sfx is not None and (f.parent / f"run{sfx}.json").is_file():
                try:
                    meta = json.loads((f.parent / f"run{sfx}.json").read_text())
                except ValueError:
                    raise SelarError(f"{f.parent / f'run{sfx}.json'} is not valid JSON") from None
            timing = f.parent / f"timing{sfx}.jsonl" if p.is_dir() and sfx is not None else None
            out.append(Source(f, d, meta, timing))
    return out


def settings(src: Source, method: str) -> Optional[dict[str, Any]]:
    """What rows of `method` in this source ran with: the run's model, engine, dtype, seed, prompt
    template and protocol version, and the --set options that apply to the method (None: no run.json)."""
    if src.meta is None:
        return None
    cfg = src.meta.get("config") or {}
    out: dict[str, Any] = {
        "model": cfg.get("model"),
        "engine": cfg.get("engine", "transformers"),
        "dtype": cfg.get("dtype", "auto"),
        "seed": cfg.get("seed", 0),
        "prompt_template": cfg.get("prompt_template"),
        "protocol": (src.meta.get("protocol") or {}).get("version"),
    }
    sets = cfg.get("sets") or {}
    try:
        opts = sets_for(sets, method)
    except SelarError:  # a method (or option) this version does not know: every --set counts
        opts = dict(sets)
    out.update({(f"set {k}" if k in out else k): v for k, v in opts.items()})
    return out


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _used(method: str, opts: dict, name: str) -> Any:
    """The value of option `name` in a run of `method` with the resolved options `opts` (run.json's)."""
    if name in opts:
        return opts[name]
    try:
        cfg = make_config(method, **opts)
    except SelarError:
        return _UNSET
    return next((getattr(part, name) for part in (cfg.sampling, cfg.options) if hasattr(part, name)), _UNSET)


def _show(src: Source, method: str, name: str, value: Any) -> str:
    """A setting's value as a row label shows it; an option left unset shows the value the run used
    (from run.json's resolved options) when it is the same on all its datasets, else "default"."""
    if value is _UNSET:
        opts = (src.meta or {}).get("method_options") or {}
        used = [_used(method, o, name) for k, o in opts.items() if k.rpartition("/")[2] == method]
        if not used or _UNSET in used or len({_key(v) for v in used}) != 1:
            return "default"
        value = used[0]
    if name == "model" and isinstance(value, str):
        return Path(value).name or value
    if name == "prompt_template":
        return "official" if value is None else "custom-" + hashlib.sha256(str(value).encode()).hexdigest()[:6]
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _labels(
    srcs: list[Source], setting: dict[tuple[int, str], Optional[dict]]
) -> dict[tuple[int, str], tuple[str, str]]:
    """The row label of every (source, method): the method's name when all its runs share their
    settings, else the name with the settings that differ (or, without run.json, the folder);
    a run's budget where its answer was forced (`force_answer_at`) is always in its label. Each
    comes with its label without the budget (`selar@tau=0.3,force_answer_at=256` -> `selar@tau=0.3`):
    the row of the budget table it is a cell of."""
    groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for (i, m), st in setting.items():
        groups[m][_key(st)].append(i)
    out: dict[tuple[int, str], tuple[str, str]] = {}
    for m, keyed in groups.items():
        firsts = [setting[(idx[0], m)] for idx in keyed.values()]
        if len(keyed) == 1 and not budget(firsts[0]):
            out.update({(i, m): (m, m) for idx in keyed.values() for i in idx})
            continue
        known = [st for st in firsts if st is not None]
        names = list(dict.fromkeys(n for st in known for n in st or {} if n != FORCE))
        differ = [n for n in names if len({_key(st.get(n, "\0unset")) for st in known if st is not None}) > 1]
        taken: set[str] = set()
        for idx in keyed.values():
            st, shown, forced = setting[(idx[0], m)], [], []
            if st is not None:
                shown = [f"{n}={_show(srcs[idx[0]], m, n, st.get(n, _UNSET))}" for n in differ]
                forced = [f"{FORCE}={budget(st)}"] if budget(st) else []
            if st is None or not (shown or forced or _only_budgets_differ(firsts)):
                folders = dict.fromkeys(Path(srcs[i].arg).name or srcs[i].arg for i in idx)
                label = unforced = f"{m}@{'+'.join(folders)}"
            else:
                label = f"{m}@{','.join(shown + forced)}" if shown or forced else m
                unforced = f"{m}@{','.join(shown)}" if shown else m
            first, n = label, 2
            while label in taken:
                label, n = f"{first}#{n}", n + 1
            taken.add(label)
            out.update({(i, m): (label, unforced) for i in idx})
    return out


def budget(st: Optional[dict]) -> int:
    """The budget a row's answer was forced at (`force_answer_at`; 0: none) in its settings."""
    value = (st or {}).get(FORCE) or 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _only_budgets_differ(settings: list[Optional[dict]]) -> bool:
    """Whether these runs' settings are all known and differ in their budget alone."""
    return (
        None not in settings
        and len({_key({k: v for k, v in (st or {}).items() if k != FORCE}) for st in settings}) == 1
    )


def _model(meta: dict) -> str:
    m = meta.get("model") or {}
    name = m.get("name") or (meta.get("config") or {}).get("model") or "unnamed"
    how = [str(v).removeprefix("torch.") for v in (m.get("engine"), m.get("dtype")) if v]
    return f"{name} ({', '.join(how)})" if how else str(name)


def read_runs(dirs: list[str]) -> Runs:
    srcs = sources(dirs)
    loaded = [read_results(s.results) for s in srcs]
    setting = {
        (i, m): settings(s, m) for i, (s, recs) in enumerate(zip(srcs, loaded)) for m in {r["method"] for r in recs}
    }
    labelled = _labels(srcs, setting)
    label = {k: row for k, (row, _) in labelled.items()}
    records: dict[tuple, dict] = {}
    for i, recs in enumerate(loaded):
        for r in recs:
            row = label[(i, r["method"])]
            if row != r["method"]:
                r = dict(r, method=row)
            key = (r["dataset"], r["problem_id"], row, r["sample"])
            if key in records and records[key]["correct"] != r["correct"]:
                warnings.warn(f"conflicting results for {key}; keeping the first")
            records.setdefault(key, r)
    timings = [
        dict(t, method=label.get((i, t["method"]), t["method"]))
        for i, s in enumerate(srcs)
        if s.timing is not None
        for t in read_results(s.timing)
    ]
    method_of = {row: m for (_, m), row in label.items()}
    paired = {
        row: None if (st := setting[k]) is None else [st.get(f) for f in PAIRED_FIELDS] + [budget(st)]
        for k, row in label.items()
    }
    rows = {(r["dataset"], r["method"]) for r in records.values()}
    baselines: dict[tuple[str, str], Optional[str]] = {}
    for d, row in rows:
        if method_of[row] == BASELINE:
            continue
        cots = [c for dd, c in rows if dd == d and method_of[c] == BASELINE and paired[c] == paired[row]]
        baselines[(d, row)] = cots[0] if len(cots) == 1 else None
    models = list(dict.fromkeys(_model(s.meta) for s in srcs if s.meta is not None))
    bare = list(dict.fromkeys(s.arg for s in srcs if s.meta is None))
    if bare:
        models.append(f"not recorded (no run.json in {', '.join(bare)})")
    split: dict[str, list[str]] = defaultdict(list)
    for row, m in sorted(method_of.items()):
        if row != m:
            split[m].append(row)
    calibration = {k: v for s in srcs if s.meta is not None for k, v in (s.meta.get("calibration") or {}).items()}
    forced = {row: (unforced, b) for k, (row, unforced) in labelled.items() if (b := budget(setting[k]))}
    return Runs(list(records.values()), timings, baselines, models, dict(split), calibration, forced)
