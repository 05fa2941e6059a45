"""A run's records kept in git, so that a long evaluation spans sessions and machines.

`selar eval` writes its records (with each prompt and gold answer) under runs/, which is not
committed. `save` copies a run into the ledger without the prompts and gold answers (benchmark data,
not ours to commit); `restore` copies it back where runs/ lacks rows, and `--resume` then continues
it. Nothing the reports read is dropped: they use the grade, the prediction, the counts and the text.

    python scripts/lib/ledger.py save|restore RUNS LEDGER NAME
"""

import gzip
import json
import shutil
import sys
from pathlib import Path

DROPPED = ("prompt", "gold")


def lines(path: Path) -> list[bytes]:
    if not path.is_file():
        return []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return [line for line in f.read().splitlines(keepends=True) if line.endswith(b"\n")]


def save(run: Path, kept: Path) -> None:
    rows = lines(run / "results.jsonl")
    if not rows:
        return
    kept.mkdir(parents=True, exist_ok=True)
    out = []
    for line in rows:
        rec = json.loads(line)
        out.append(json.dumps({k: v for k, v in rec.items() if k not in DROPPED}, ensure_ascii=False) + "\n")
    with open(kept / "results.jsonl.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write("".join(out).encode())  # mtime 0: the same rows give the same bytes
    for p in run.glob("*.json*"):
        if p.name != "results.jsonl" and not p.name.endswith(".tmp"):
            shutil.copyfile(p, kept / p.name)
    print(f"ledger: {run.name}: {len(out)} rows kept")


def restore(run: Path, kept: Path) -> None:
    have, rows = lines(run / "results.jsonl"), lines(kept / "results.jsonl.gz")
    if len(rows) <= len(have):
        return
    run.mkdir(parents=True, exist_ok=True)
    (run / "results.jsonl").write_bytes(b"".join(rows))
    for p in kept.iterdir():
        if p.name != "results.jsonl.gz":
            shutil.copyfile(p, run / p.name)
    print(f"ledger: {run.name}: {len(rows)} rows restored (runs/ had {len(have)})")


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] not in ("save", "restore"):
        sys.exit("usage: ledger.py save|restore RUNS LEDGER NAME")
    op, runs, ledger, name = sys.argv[1:]
    (save if op == "save" else restore)(Path(runs) / name, Path(ledger) / name)
