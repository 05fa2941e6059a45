"""Catalog: assembly in numeric order with checksum, atomic writes, corruption and recovery."""

from __future__ import annotations

import errno
import hashlib
import time
from pathlib import Path

import pytest

import selar
from selar import catalog


def fake_entry(tmp_path: Path, n: int = 11, corrupt: bool = False):
    """n part files whose correct order is numeric (part10 after part9), and a matching entry."""
    parts = []
    for i in range(1, n + 1):
        p = tmp_path / f"part{i:d}.bin"
        p.write_bytes(bytes([i]) * (1000 + i))
        parts.append(p)
    whole = b"".join(p.read_bytes() for p in parts)
    sha = hashlib.sha256(whole + (b"x" if corrupt else b"")).hexdigest()
    entry = catalog.CatalogEntry(
        name="fake",
        upstream="none",
        license="none",
        packages=(),
        pattern="",
        filename="fake.gguf",
        sha256=sha,
        size=len(whole),
    )
    return entry, parts


def test_natural_order():
    names = [f"pkg/data/part{i}.bin" for i in (1, 10, 2, 9, 11)]
    assert sorted(names, key=catalog._natural_key) == [f"pkg/data/part{i}.bin" for i in (1, 2, 9, 10, 11)]


def test_assemble_verifies_and_is_atomic(tmp_path, monkeypatch):
    entry, parts = fake_entry(tmp_path)
    monkeypatch.setattr(catalog, "part_files", lambda e: parts)
    out = catalog.assemble(entry, tmp_path / "out")
    assert out.read_bytes() == b"".join(p.read_bytes() for p in parts)

    bad, _ = fake_entry(tmp_path, corrupt=True)
    with pytest.raises(selar.ChecksumError, match="expected"):
        catalog.assemble(bad, tmp_path / "bad")
    assert list((tmp_path / "bad").iterdir()) == []  # nothing half-written left behind


def test_full_disk_leaves_nothing(tmp_path, monkeypatch):
    entry, parts = fake_entry(tmp_path)
    monkeypatch.setattr(catalog, "part_files", lambda e: parts)
    real_fdopen = catalog.os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(catalog.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(selar.ModelLoadError, match="No space left"):
        catalog.assemble(entry, tmp_path / "full")
    assert list((tmp_path / "full").iterdir()) == []


@pytest.mark.slow
def test_corrupt_cache_is_detected_and_repaired(smollm2, capsys):
    entry = catalog.get_entry("smollm2-135m")
    folder = catalog.model_dir(entry)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte in the middle of the weights
    weights.write_bytes(bytes(data))
    with pytest.raises(selar.ChecksumError, match="corrupt.*selar models pull smollm2-135m --force"):
        selar.load_model("smollm2-135m")
    catalog.pull("smollm2-135m", force=True)  # the recovery
    catalog.verify_folder(folder, full=True)
    t0 = time.perf_counter()
    m = selar.load_model("smollm2-135m", dtype="float32")
    assert time.perf_counter() - t0 < 30
    r = selar.generate(m, "Hello", "cot", temperature=0, max_new_tokens=4)[0]
    ref = selar.generate(smollm2, "Hello", "cot", temperature=0, max_new_tokens=4)[0]
    assert r.token_ids == ref.token_ids


def test_catalog_tokenizer_loads_without_the_mistral_regex_warning(smollm2):
    """transformers 4.57.3+ warns "incorrect regex pattern" for every tokenizer it saved itself;
    selar silences it for catalog folders only."""
    import logging

    from transformers import AutoTokenizer

    seen = []

    class Grab(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    log = logging.getLogger("transformers.tokenization_utils_base")
    h = Grab(level=logging.WARNING)
    log.addHandler(h)
    try:
        AutoTokenizer.from_pretrained(str(catalog.model_dir(catalog.CATALOG["smollm2-135m"])))
        log.warning("a tokenizer from /elsewhere with an incorrect regex pattern: set fix_mistral_regex=True")
    finally:
        log.removeHandler(h)
    assert not any("fix_mistral_regex" in m and "selar" in m for m in seen), seen
    assert any("/elsewhere" in m for m in seen)  # other folders still warn


def _as_written_by_transformers_5(folder: Path) -> float:
    """Rewrite a converted folder's config as transformers 5 saves it (RoPE's settings only under
    `rope_parameters`), its manifest updated as a conversion would; returns the RoPE base."""
    import json

    cfg_path, marker_path = folder / "config.json", folder / catalog.MARKER
    cfg = json.loads(cfg_path.read_text())
    theta = cfg.pop("rope_theta")
    cfg.pop("rope_scaling", None)
    cfg["rope_parameters"] = {"rope_theta": theta, "rope_type": "default"}
    cfg_path.write_text(json.dumps(cfg, indent=2))
    marker = json.loads(marker_path.read_text())
    st = cfg_path.stat()
    marker["files"]["config.json"] = {
        "size": st.st_size,
        "sha256": catalog.sha256_file(cfg_path),
        "mtime_ns": st.st_mtime_ns,
    }
    marker_path.write_text(json.dumps(marker, indent=1))
    return theta


def test_a_config_written_by_transformers_5_is_made_readable_by_transformers_4(smollm2, capsys):
    """The model cache is shared by .venv (transformers 4) and vLLM's environment (transformers 5).
    A folder converted under 5 names its RoPE base only in `rope_parameters`, which 4 ignores,
    silently taking base 10000 (a degraded model, no error): the next pull adds the keys 4 reads,
    keeps the manifest valid, and the model decodes as before."""
    import transformers
    from transformers import AutoConfig

    folder = catalog.model_dir(catalog.get_entry("smollm2-135m"))
    theta = _as_written_by_transformers_5(folder)
    assert theta != 10000.0
    if int(transformers.__version__.split(".")[0]) < 5:  # the hazard, as this environment reads it
        assert AutoConfig.from_pretrained(folder).rope_theta == 10000.0
    assert catalog.pull("smollm2-135m") == folder
    assert "RoPE settings as transformers 4 reads them" in capsys.readouterr().out
    assert AutoConfig.from_pretrained(folder).rope_theta == theta
    catalog.verify_folder(folder, full=True)
    catalog.pull("smollm2-135m")  # once made portable, left alone
    assert "RoPE" not in capsys.readouterr().out
    r = selar.generate(
        selar.load_model("smollm2-135m", dtype="float32"), "Hello", "cot", temperature=0, max_new_tokens=8
    )
    assert r[0].token_ids == selar.generate(smollm2, "Hello", "cot", temperature=0, max_new_tokens=8)[0].token_ids


def test_portable_config_names_scaled_rope_both_ways(tmp_path):
    import json

    p = tmp_path / "config.json"
    yarn = {"rope_theta": 1e6, "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    p.write_text(json.dumps({"model_type": "qwen2", "rope_parameters": yarn}))
    assert catalog.portable_config(p)
    cfg = json.loads(p.read_text())
    assert cfg["rope_theta"] == 1e6 and cfg["rope_parameters"] == yarn
    assert cfg["rope_scaling"] == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert not catalog.portable_config(p)  # idempotent
    p.write_text(json.dumps({"model_type": "llama", "rope_theta": 5e5}))  # as transformers 4 writes it
    assert not catalog.portable_config(p)
