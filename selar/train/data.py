"""Question / chain-of-thought / answer data: a synthetic multi-step arithmetic generator (for
machines without internet), a JSONL loader and GSM8K-Aug from the Hugging Face hub."""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, OfflineError

ANSWER_PREFIX = "The answer is:"


@dataclass
class Example:
    question: str
    steps: list[str] = field(default_factory=list)  # the chain of thought, one reasoning step each
    answer: str = ""

    def to_dict(self) -> dict:
        return {"question": self.question, "steps": list(self.steps), "answer": self.answer}


OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


LAYOUTS = ("spaced", "aligned")
FILLER = "."


def synthetic_arithmetic(
    n: int, *, min_steps: int = 1, max_steps: int = 4, modulus: int = 10, seed: int = 0, layout: str = "spaced"
) -> list[Example]:
    """`n` problems "3 + 4 * 2 - 5 =" evaluated left to right modulo `modulus`, with one CoT step
    per operation ("3 + 4 = 7", "7 * 2 = 4", "4 - 5 = 9") and the final value as the answer.
    The number of operations is uniform in [min_steps, max_steps], so the reasoning length
    varies from problem to problem: what the stop head has to learn.

    `layout="aligned"`: each operation one word and the question padded to `max_steps` operations
    with "." ("3 +4 *2 . . =", steps "3 +4 = 7", "7 *2 = 4"), so that operation j always sits at
    the same distance from the j-th latent step: a fixed-width format a small model trained from
    scratch can read step by step in latent space. There every operation is a bijection modulo
    `modulus` other than the identity (multipliers coprime to it, not 1): no operation loses
    information, so an answer read before the last operation is almost always wrong, and the
    only way to reason shorter and stay right is to stop right after it (with "*5" or "*2" a value
    collapses, and RL learns to stop early where it happens to be right)."""
    if not 1 <= min_steps <= max_steps:
        raise ConfigError(f"need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
    if modulus < 2:
        raise ConfigError(f"modulus must be at least 2, got {modulus}")
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    sep = "" if layout == "aligned" else " "
    units = [b for b in range(2, modulus) if math.gcd(b, modulus) == 1] or [1]  # multipliers that lose nothing
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(min_steps, max_steps)
        v = rng.randrange(modulus)
        q, steps = [str(v)], []
        for _ in range(k):
            op = rng.choice("+-*")
            b = rng.choice(units) if op == "*" and layout == "aligned" else rng.randrange(1, modulus)
            w = OPS[op](v, b) % modulus
            q.append(f"{op}{sep}{b}")
            steps.append(f"{v} {op}{sep}{b} = {w}")
            v = w
        if layout == "aligned":
            q += [FILLER] * (max_steps - k)
        out.append(Example(" ".join(q) + " =", steps, str(v)))
    return out


def synthetic_split(
    n_train: int, n_eval: int, *, max_steps: int = 4, modulus: int = 10, seed: int = 0, layout: str = "spaced"
) -> tuple[list[Example], list[Example]]:
    """Training problems and held-out evaluation problems (no question in both)."""
    ev = synthetic_arithmetic(n_eval, max_steps=max_steps, modulus=modulus, seed=seed + 1, layout=layout)
    seen = {e.question for e in ev}
    tr: list[Example] = []
    s = seed
    while len(tr) < n_train:
        tr += [
            e
            for e in synthetic_arithmetic(n_train, max_steps=max_steps, modulus=modulus, seed=s, layout=layout)
            if e.question not in seen
        ]
        s += 1000
    return tr[:n_train], ev


def load_jsonl(path: str | Path, *, fields: Optional[dict] = None) -> list[Example]:
    """One JSON object per line with `question`, `steps` (a list, or a string split on
    newlines) and `answer`; `fields` maps other names, e.g. {"steps": "cot"}."""
    names = {"question": "question", "steps": "steps", "answer": "answer", **(fields or {})}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no such data file: {p}")
    out = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            q, a = d[names["question"]], d[names["answer"]]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(
                f"{p}:{i}: expected a JSON object with {names['question']!r} and "
                f"{names['answer']!r} ({type(e).__name__}: {e})"
            ) from None
        steps = d.get(names["steps"], [])
        if isinstance(steps, str):
            steps = [s.strip() for s in steps.splitlines() if s.strip()]
        out.append(Example(str(q).strip(), [str(s) for s in steps], str(a).strip()))
    if not out:
        raise ConfigError(f"{p} holds no examples")
    return out


def save_jsonl(examples: list[Example], path: str | Path) -> None:
    Path(path).write_text("".join(json.dumps(e.to_dict()) + "\n" for e in examples))


GSM8K_AUG = "whynlp/gsm8k-aug"


def gsm8k_aug_steps(cot: str) -> list[str]:
    """GSM8K-Aug writes its CoT as '<<600*30/100=180>> <<600*10/100=60>> ...'."""
    steps = re.findall(r"<<(.*?)>>", cot)
    return steps or [s for s in cot.split() if s]


def load_gsm8k_aug(split: str = "train", limit: Optional[int] = None) -> list[Example]:
    """GSM8K-Aug (385k problems, equation-style CoT) from the Hugging Face hub: needs
    `pip install selar[hub]` and internet (or a local datasets cache)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            "GSM8K-Aug comes from the Hugging Face hub: pip install 'selar[hub]' "
            "(and internet), or give a question/steps/answer JSONL file"
        ) from None
    from ..hub import hub_offline as _hub_offline
    from ..hub import hub_reachable as _hub_reachable

    try:
        ds = datasets.load_dataset(GSM8K_AUG, split=split)
    except Exception as e:  # offline, or not in the cache
        if _hub_offline() or not _hub_reachable():
            raise OfflineError(
                f"cannot reach the Hugging Face hub to download {GSM8K_AUG} (offline?); "
                f"use --data synthetic or a question/steps/answer JSONL file"
            ) from None
        raise ConfigError(f"could not load {GSM8K_AUG}: {str(e).strip().splitlines()[0]}") from None
    out = []
    for i, d in enumerate(ds):
        if limit is not None and i >= limit:
            break
        out.append(Example(d["question"].strip(), gsm8k_aug_steps(d["cot"]), str(d["answer"]).strip()))
    return out


SYNTHETIC = {"synthetic": "spaced", "synthetic-aligned": "aligned"}


def load_data(spec: str, *, n: int = 2000, seed: int = 0, max_steps: int = 4) -> list[Example]:
    """`synthetic` or `synthetic-aligned` (the generator and its layouts), `gsm8k-aug` (hub) or a JSONL path."""
    if spec in SYNTHETIC:
        return synthetic_arithmetic(n, max_steps=max_steps, seed=seed, layout=SYNTHETIC[spec])
    if spec == "gsm8k-aug":
        return load_gsm8k_aug(limit=n)
    return load_jsonl(spec)


def split_data(
    spec: str,
    n_train: int,
    n_eval: int,
    *,
    max_steps: int = 4,
    seed: int = 0,
    modulus: int = 10,
    eval_data: Optional[str] = None,
) -> tuple[list[Example], list[Example]]:
    """(training, held-out) problems: the one split `selar train sft`, `rl`, `eval` and `demo` use, so
    that every command reports on the same held-out problems whatever `n_train` is.

    - `synthetic[-aligned]`: held-out problems from their own seed, training problems that are none of them;
    - `eval_data` (a JSONL file): its first `n_eval` problems are held out, `spec` is all training data;
    - otherwise (`gsm8k-aug`, a JSONL file): the first `n_eval` problems of `spec` are held out and
      training uses the next `n_train`, minus any question also held out."""
    if n_train < 0 or n_eval < 1:
        raise ConfigError(f"need n_train >= 0 and n_eval >= 1, got {n_train}, {n_eval}")
    if spec in SYNTHETIC and not eval_data:
        return synthetic_split(n_train, n_eval, max_steps=max_steps, modulus=modulus, seed=seed, layout=SYNTHETIC[spec])
    if eval_data:
        held = load_jsonl(eval_data)[:n_eval]
        train = load_data(spec, n=n_train, seed=seed, max_steps=max_steps)[:n_train] if n_train else []
    else:
        exs = load_data(spec, n=n_eval + n_train, seed=seed, max_steps=max_steps)
        if len(exs) <= n_eval and n_train:
            raise ConfigError(
                f"--data {spec} holds {len(exs)} problems: --n-eval {n_eval} leaves none for "
                f"training; lower --n-eval or give --eval-data"
            )
        held, train = exs[:n_eval], exs[n_eval : n_eval + n_train]
    seen = {e.question for e in held}
    return [e for e in train if e.question not in seen], held


ANSWER_RE = re.compile(r"^\s*The answer is\s*:\s*(-?[\d.,/]+)\s*$")


def parse_answer(text: str) -> Optional[str]:
    """The answer of a well formed completion ('The answer is: 42'), else None."""
    m = ANSWER_RE.match(text)
    return m.group(1).replace(",", "") if m else None


def is_correct(pred: Optional[str], gold: str) -> bool:
    if pred is None:
        return False
    pred, gold = pred.replace(",", ""), gold.replace(",", "")
    if pred == gold:
        return True
    try:
        return abs(float(pred) - float(gold)) < 1e-6
    except ValueError:
        return False
