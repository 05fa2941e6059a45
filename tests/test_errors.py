"""Bad input: typed exceptions from the API, one sentence and a non-zero exit from the CLI."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import selar
from selar.cli import main


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(tau=1.5), "tau must be in"),
        (dict(tau=-0.1), "tau must be in"),
        (dict(k=1), "k must be in"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(gate_scope="all"), "gate_scope must be one of row, batch"),
        (dict(bogus=1), "unknown option"),
        (dict(k="3"), "must be an integer"),
    ],
)
def test_bad_options(tiny, kw, match):
    with pytest.raises(selar.ConfigError, match=match):
        selar.generate(tiny, "hi", "selar", **kw)


def test_k_larger_than_vocab(tiny):
    with pytest.raises(selar.ConfigError, match="vocabulary size"):
        selar.generate(tiny, "hi", "selar", k=100000, max_new_tokens=2)


def test_unknown_method(tiny):
    with pytest.raises(selar.ConfigError, match="known methods: cot, selar"):
        selar.generate(tiny, "hi", "beam")


def test_empty_and_too_long_prompts(tiny):
    with pytest.raises(selar.PromptError, match="empty"):
        selar.generate(tiny, "   ", "cot")
    with pytest.raises(selar.PromptError, match="context"):
        selar.generate(tiny, "clips " * 600, "cot", max_new_tokens=2)


def test_missing_path_and_offline_hub(monkeypatch, tmp_path):
    with pytest.raises(selar.ModelLoadError, match="no such model file or folder"):
        selar.load_model("./does/not/exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(selar.ModelLoadError, match="no config.json"):
        selar.load_model(str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(selar.OfflineError, match="offline"):
        selar.load_model("Qwen/Qwen3-8B")
    with pytest.raises(selar.ModelLoadError, match="not a catalog model"):
        selar.load_model("no-such-model")


def test_bad_gguf_file(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(selar.ModelLoadError, match="could not load"):
        selar.load_model(str(bad))


@pytest.mark.parametrize(
    "args,match",
    [
        (["generate", "hi", "--tau", "2"], "tau must be in [0.0, 1.0], got 2.0"),
        (["generate", "hi", "--method", "nope"], "unknown method 'nope'"),
        (["generate", "hi", "--max-new-tokens", "0"], "max_new_tokens"),
        (["generate", "hi", "--model", "./missing"], "no such model file or folder"),
        (["models", "pull", "gpt-5"], "unknown catalog model 'gpt-5'; known: smollm2-135m"),
    ],
)
def test_cli_errors_are_one_sentence(args, match):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2
    assert match in res.output
    assert "Traceback" not in res.output
    assert res.output.count("\n") == 1


def test_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    import selar.hub as hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(selar.OfflineError, match="cannot reach the Hugging Face hub"):
        selar.load_model("Qwen/Qwen3-8B")
