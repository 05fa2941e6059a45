"""The vLLM engine's pure parts, without vLLM: request options, the server defaults of
`selar serve --engine vllm` (issue 16, bug 3) and its command line and environment (bug 2).
vLLM's own `vllm serve` is replaced by a stand-in for `os.execv`, so these run everywhere."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from selar.cli import main
from selar.config import SamplingConfig
from selar.engines.vllm import (
    engine_kwargs,
    launch,
    parse_request,
    pin_v1_runner,
    request_args,
    runner,
    split_server_defaults,
)
from selar.engines.vllm.request import DEFAULTS_ENV
from selar.errors import CapabilityError, ConfigError

SECRET = "sk-selar-test-3f9a1c"
RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"


def params(extra=None, seed=None, temperature=0.7, max_tokens=32, **penalties):
    """The fields of a vLLM SamplingParams that the plugin reads."""
    pen = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0, **penalties}
    return SimpleNamespace(
        temperature=temperature, top_p=0.9, top_k=-1, min_p=0.0, max_tokens=max_tokens, seed=seed, extra_args=extra,
        **pen,
    )  # fmt: skip


@pytest.fixture
def env(monkeypatch):
    """Restore the variables `serve` sets in this process."""
    for k in (DEFAULTS_ENV, launch.API_KEY_ENV, "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE", RUNNER_ENV):
        monkeypatch.setenv(k, "unset")
        monkeypatch.delenv(k)
    monkeypatch.setattr(runner, "_pinned", False)
    return monkeypatch


@pytest.fixture
def fake_vllm(env, tmp_path):
    """`selar serve --engine vllm` up to the exec of `vllm serve`: returns what it would exec."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    execs = []
    env.setattr(launch, "require_vllm", lambda: None)
    env.setattr(launch, "soft_architecture", lambda f: "SelarLlamaForCausalLM")
    env.setattr(os, "execv", lambda path, argv: execs.append((path, list(argv), dict(os.environ))))

    def run(*args):
        r = CliRunner().invoke(main, ["serve", "--engine", "vllm", "--model", str(folder), "--port", "8123", *args])
        return r, (execs[-1] if execs else None)

    return run


# -- bug 2: the API key ------------------------------------------------------------------------
def test_api_key_goes_through_the_environment_and_is_never_printed(fake_vllm):
    r, (path, argv, environ) = fake_vllm("--api-key", SECRET)
    assert r.exit_code == 0, r.output
    assert not any(SECRET in a for a in argv), argv
    assert "--api-key" not in argv
    assert environ[launch.API_KEY_ENV] == SECRET  # vLLM reads VLLM_API_KEY
    assert SECRET not in r.output and SECRET not in (r.stderr or "")
    assert argv[1:4] == ["-m", "selar.engines.vllm.launch", "serve"]  # vLLM's CLI in this interpreter
    assert "selar: vllm serve" in r.output  # the command is shown


def test_api_key_from_selar_api_key_variable(fake_vllm, env):
    env.setenv("SELAR_API_KEY", SECRET)
    r, (_, argv, environ) = fake_vllm()
    assert r.exit_code == 0, r.output
    assert environ[launch.API_KEY_ENV] == SECRET and not any(SECRET in a for a in argv)
    assert SECRET not in r.output


def test_a_key_given_as_a_vllm_flag_is_hidden_when_printed(fake_vllm):
    r, (_, argv, _) = fake_vllm(f"--vllm-arg=--api-key={SECRET}")
    assert r.exit_code == 0, r.output
    assert f"--api-key={SECRET}" in argv  # the user's own flag is passed on as given ...
    assert SECRET not in r.output  # ... but not shown
    assert launch.redacted(["vllm", "--api-key", SECRET, "--port", "1"]) == "vllm --api-key '***' --port 1"


def test_no_key_no_variable(fake_vllm):
    r, (_, _, environ) = fake_vllm()
    assert r.exit_code == 0, r.output
    assert launch.API_KEY_ENV not in environ


# -- issue 29 part 1: the V1 model runner for selar's V1 processor -------------------------------
def test_pin_v1_runner(env, capsys):
    """VLLM_USE_V2_MODEL_RUNNER=0 set before vLLM starts, said in one line once; a user's 0 is kept
    silently; a user's 1 is refused, naming the conflict and the fix."""
    pin_v1_runner()
    pin_v1_runner()
    assert os.environ[RUNNER_ENV] == "0"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Model Runner V2 does not load" in err[0], err
    env.setattr(runner, "_pinned", False)
    env.setenv(RUNNER_ENV, "0")
    pin_v1_runner()
    assert os.environ[RUNNER_ENV] == "0" and not capsys.readouterr().err
    env.setenv(RUNNER_ENV, "1")
    with pytest.raises(CapabilityError, match=f"{RUNNER_ENV}=1 asks for vLLM's Model Runner V2.*unset {RUNNER_ENV}"):
        pin_v1_runner()
    assert os.environ[RUNNER_ENV] == "1"


def test_runner_is_pinned_only_for_selar(env, tmp_path):
    """`load_model(engine="vllm")` builds vLLM's arguments here: with the plugin the runner is
    pinned; stock vLLM (no plugin) is left alone."""
    kw = engine_kwargs(str(tmp_path), None, dtype="float32", max_num_seqs=2, max_model_len=64)
    assert "logits_processors" not in kw and RUNNER_ENV not in os.environ
    kw = engine_kwargs(str(tmp_path), "SelarLlamaForCausalLM", dtype="float32", max_num_seqs=2, max_model_len=64)
    assert kw["logits_processors"] == [runner.LOGITS_PROCESSOR] and os.environ[RUNNER_ENV] == "0"


def test_serve_pins_the_runner(fake_vllm, env):
    r, (_, _, environ) = fake_vllm()
    assert r.exit_code == 0, r.output
    assert environ[RUNNER_ENV] == "0"  # `vllm serve` and its workers inherit it
    env.setenv(RUNNER_ENV, "1")
    r, execd = fake_vllm()
    assert r.exit_code != 0 and f"{RUNNER_ENV}=1 asks for vLLM's Model Runner V2" in r.output, r.output


# -- bug 3: --set defaults reach vLLM ----------------------------------------------------------
def _override(argv):
    return json.loads(argv[argv.index("--override-generation-config") + 1])


def test_set_defaults_reach_vllm(fake_vllm):
    r, (_, argv, environ) = fake_vllm(
        "--method",
        "selar",
        "--set",
        "tau=0.45",
        "--set",
        "soft_scope=all",
        "--set",
        "seed=7",
        "--set",
        "max_new_tokens=100",
        "--set",
        "temperature=0.3",
        "--set",
        "mix_min_p=0.01",
    )
    assert r.exit_code == 0, r.output
    gen = _override(argv)
    assert gen["max_new_tokens"] == 100 and gen["temperature"] == 0.3  # vLLM's defaults for requests
    assert gen["top_p"] == SamplingConfig().top_p  # unset ones: selar's paper settings
    plugin = json.loads(environ[DEFAULTS_ENV])
    assert plugin == {
        "selar_method": "selar",
        "selar_tau": 0.45,
        "selar_soft_scope": "all",
        "selar_seed": 7,
        "selar_mix_min_p": 0.01,
    }


@pytest.mark.parametrize(
    "flag,message",
    [
        ("stop=###", "stop cannot be a server default"),
        ("soft_scope=everything", "soft_scope must be one of"),
        ("max_new_tokens=5000", "more than --max-tokens"),
        ("bogus=1", "unknown option"),
        ("min_new_tokens=4", "vLLM takes min_tokens from each request only"),
        ("ignore_eos=true", "vLLM takes ignore_eos from each request only"),
        ("force_answer_at=64", "force_answer_at is not supported with --engine vllm: the answer forced at a token"),
    ],
)
def test_defaults_vllm_cannot_carry_are_refused_at_start(fake_vllm, flag, message):
    r, execd = fake_vllm("--set", flag)
    assert r.exit_code == 2 and execd is None
    assert message in r.output


def test_plugin_applies_the_server_defaults(env):
    """The chain's far end: the plugin, given the server's defaults, uses them for requests that
    do not set them, and a request's own settings win."""
    _, plugin = split_server_defaults("selar", {"soft_scope": "all", "seed": 7, "tau": 0.45, "max_topk": 3})
    env.setenv(DEFAULTS_ENV, json.dumps(plugin))
    cfg, key = parse_request(params())  # no method of its own: the server's
    assert cfg.method == "selar" and key is None
    assert cfg.sampling.soft_scope == "all" and cfg.sampling.seed == 7 and cfg.options.tau == 0.45
    assert cfg.sampling.temperature == 0.7 and cfg.sampling.max_new_tokens == 32  # the request's own
    cfg, _ = parse_request(params(seed=11, extra=request_args("selar", {"soft_scope": "reasoning", "tau": 0.6})))
    assert (cfg.sampling.seed, cfg.sampling.soft_scope, cfg.options.tau) == (11, "reasoning", 0.6)
    guard = {"soft_scope": "guarded", "answer_markers": ["####"]}  # the answer guard: the plugin runs it
    cfg, _ = parse_request(params(extra=request_args("selar", guard)))
    assert cfg.sampling.guarded and cfg.sampling.answer_markers == ("####",)
    cfg, _ = parse_request(params(extra=request_args("soft-thinking")))  # defaults only where the method has them
    assert cfg.options.max_topk == 3 and cfg.sampling.seed == 7
    cfg, _ = parse_request(params(extra=request_args("selar", {"seed": 5}), seed=11))
    assert cfg.sampling.seed == 5  # selar_seed (selar's runner) over the request's seed


# -- request options ---------------------------------------------------------------------------
def test_requests_without_a_method_are_plain_vllm(env):
    assert parse_request(params()) is None
    assert parse_request(params(extra={"other_plugin": 1})) is None


def test_request_options(env):
    cfg, key = parse_request(params(extra=request_args("selar", {"k": 5, "temperature": 0.0}, key="r1"), seed=3))
    assert (cfg.options.k, cfg.sampling.temperature, cfg.sampling.seed, key) == (5, 0.0, 3, "r1")
    assert cfg.sampling.top_k == 0  # vLLM's -1: no top-k
    a, _ = parse_request(params(extra=request_args("cot")))
    b, _ = parse_request(params(extra=request_args("cot")))
    assert a.sampling.seed != b.sampling.seed  # no seed anywhere: random, as OpenAI's API


@pytest.mark.parametrize(
    "extra,error,message",
    [
        (request_args("selar", {"tau": 2.0}), ConfigError, "tau must be in"),
        (request_args("selar", {"max_topk": 3}), ConfigError, "unknown option"),
        (request_args("selar", {"max_new_tokens": 3}), ConfigError, "the request's own max_tokens"),
        (request_args("selar", {"min_new_tokens": 3}), ConfigError, "the request's own min_tokens"),
        (request_args("selar", {"answer_markers": []}), ConfigError, "answer_markers must be one or more"),
        (request_args("swir", {"max_switch_count": 2}), CapabilityError, "max_switch_count is not supported"),
        (request_args("cot", {"force_answer_at": 8}), CapabilityError, "selar_force_answer_at: the answer forced"),
        (request_args("adaptive-latent"), CapabilityError, "only the transformers engine"),
        (request_args("nonsense"), ConfigError, "unknown method"),
    ],
)
def test_bad_requests(env, extra, error, message):
    with pytest.raises(error, match=message):
        parse_request(params(extra=extra))


def test_every_sampling_setting_has_its_place():
    """Each of selar's sampling settings is applied by the plugin, left to vLLM's request, or
    refused with a reason: none is dropped (a new one fails here until it is placed)."""
    from selar.config import SAMPLING_FIELDS
    from selar.engines.vllm import request as rq

    placed = set(rq.OVERRIDABLE) | set(rq.PLUGIN_ONLY) | set(rq.VLLM_OWN) | set(rq.UNSUPPORTED)
    assert placed == set(SAMPLING_FIELDS)
    assert "the vLLM plugin does not apply it yet" not in rq.UNSUPPORTED.values(), rq.UNSUPPORTED


# -- the answer guard in the plugin's state ----------------------------------------------------
def test_the_answer_guard_in_the_plugin_state():
    """soft_scope=guarded in the plugin's per-row state, without vLLM. Logits make greedy SeLaR
    write a text token by token with every step uncertain. A guarded row's steps are soft until
    the step whose token completes the marker, which is plain, as is every later step. An
    unguarded row stays soft. The expectation comes from the decoded prefixes alone. A request that
    resumes after its marker (vLLM preempted it) starts plain."""
    import torch
    from conftest import make_tokenizer

    from selar.engines.vllm.state import SoftState
    from selar.methods.base import VocabInfo

    tok = make_tokenizer()
    ids = tok("First, 48 / 2 = 24. So the answer is \\boxed{72}. Then 48 + 24 = 72.", add_special_tokens=False)[
        "input_ids"
    ]
    markers = SamplingConfig().answer_markers  # the defaults: "answer is" comes first here
    first = next(k for k in range(len(ids)) if any(m in tok.decode(ids[: k + 1]) for m in markers))
    assert 3 < first < len(ids) - 3
    st = SoftState(3, torch.device("cpu"), VocabInfo(size=len(tok), tokenizer=tok))
    prompt = tok("How many clips?", add_special_tokens=False)["input_ids"]
    later = tok(" 0 1 2 3 4 5 6 7 8 9" * 4, add_special_tokens=False)["input_ids"]  # the marker far back
    for i, (scope, done) in enumerate((("guarded", []), ("all", []), ("guarded", ids[: first + 1] + later))):
        extra = request_args("selar", {"soft_scope": scope, "tau": 0.0, "protect_symbols": False})
        st.add(i, params(extra=extra, temperature=0, max_tokens=4 * len(ids)), prompt, list(done))
    for t in ids:
        logits = torch.zeros(3, len(tok))
        logits[:, t] = 2.0  # the greedy token, with entropy left among the others: every step uncertain
        st.t["last_pos"][:3] = st.t["prompt_len"][:3] + st.t["step"][:3] - 1  # the forward reached each row's end
        assert st.apply(logits).argmax(-1).tolist() == [t] * 3
    guarded, unguarded, resumed = (st.record(i)["soft"] for i in range(3))
    assert guarded == [k < first for k in range(len(ids))]
    assert unguarded == [True] * len(ids)
    assert len(later) > 40 and resumed[first + 1 + len(later) :] == [False] * len(ids)


def test_a_preempted_request_that_had_soft_inputs_is_said_and_counted(caplog):
    """vLLM recomputes a preempted request's prefix from token ids, so its earlier soft inputs are
    lost: the plugin's state says so (naming the request and the count) when it resumes, once; a
    request that had none (cot) resumes silently."""
    import logging

    import torch
    from conftest import make_tokenizer

    from selar.engines.vllm.state import SoftState
    from selar.methods.base import VocabInfo

    tok = make_tokenizer()
    st = SoftState(2, torch.device("cpu"), VocabInfo(size=len(tok), tokenizer=tok))
    prompt = tok("How many clips?", add_special_tokens=False)["input_ids"]
    opts = {"selar": {"tau": 0.0, "protect_symbols": False}, "cot": {}}
    for i, (m, key) in enumerate((("selar", "req-soft"), ("cot", "req-plain"))):
        st.add(i, params(extra=request_args(m, opts[m], key=key), temperature=0, max_tokens=16), prompt, [])
    out = []
    for t in (5, 6, 7):
        logits = torch.zeros(2, len(tok))
        logits[:, t] = 2.0  # every step uncertain: selar feeds a mixture at each
        st.t["last_pos"][:2] = st.t["prompt_len"][:2] + st.t["step"][:2] - 1
        st.apply(logits)
        out.append(t)
    assert st.record(0)["soft"] == [True] * 3 and st.record(1)["soft"] == [False] * 3
    st.clear(0), st.clear(1)  # preempted: both leave the batch
    with caplog.at_level(logging.WARNING, logger="selar.engines.vllm.state"):
        for i, (m, key) in enumerate((("selar", "req-soft"), ("cot", "req-plain"))):
            st.add(i, params(extra=request_args(m, opts[m], key=key), temperature=0, max_tokens=16), prompt, out)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "req-soft" in said[0] and "its 3 earlier soft inputs" in said[0], said
    assert st.recomputed == 3


# -- penalties in the plugin's state ------------------------------------------------------------
def _greedy_penalised(z, prompt, out, presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0) -> int:
    """The greedy token under OpenAI's penalties (vLLM's order), in float64, one row."""
    z = z.double().clone()
    for v in range(z.shape[0]):
        c = out.count(v)
        if v in prompt or c:
            z[v] = z[v] / repetition_penalty if z[v] > 0 else z[v] * repetition_penalty
        z[v] -= c * frequency_penalty + (c > 0) * presence_penalty
    return int(z.argmax())


def test_penalties_in_the_plugin_state():
    """The plugin applies a request's own presence, frequency and repetition penalties itself,
    before the method's step (vLLM's sampler runs them only after the plugin's processor has forced
    its token: vllm/v1/sample/sampler.py), from per-row counts of the real samples that follow
    vLLM's row moves, a resumed request's output so far included. Greedy `cot` on fixed logits
    emits, row by row, the float64 reference's greedy tokens under the same penalties; a request
    without penalties in the same batch emits the plain argmax every step."""
    import torch

    from selar.engines.vllm.state import SoftState
    from selar.methods.base import VocabInfo

    V, n = 40, 10
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, V, generator=g)
    z[:, :6] += 3.0  # a few strong tokens, which the penalties take turns on
    prompts = [[1, 2, 3, 7], [4, 5], [2, 9, 9]]
    pens = [dict(presence_penalty=1.5, frequency_penalty=0.5, repetition_penalty=1.3), {},
            dict(presence_penalty=1.5)]  # fmt: skip
    resumed = [[], [], [0, 1, 1]]  # row 2 resumes after vLLM preempted it
    st = SoftState(3, torch.device("cpu"), VocabInfo(size=V))
    for i in range(3):
        st.add(i, params(extra=request_args("cot"), temperature=0, max_tokens=64, **pens[i]), prompts[i], resumed[i])
    order, out = [0, 1, 2], [list(r) for r in resumed]
    for step in range(n):
        if step == 4:  # vLLM swaps rows 0 and 2 of its persistent batch
            st.move(0, 2, swap=True)
            order = [2, 1, 0]
        st.t["last_pos"][:3] = st.t["prompt_len"][:3] + st.t["step"][:3] - 1  # the forward reached each row's end
        tok = st.apply(z[order].clone()).argmax(-1).tolist()
        for at, req in enumerate(order):
            want = _greedy_penalised(z[req], prompts[req], out[req], **pens[req])
            assert tok[at] == want, (step, req)
            out[req].append(tok[at])
    assert len(set(out[0])) > 2 and len(set(out[2][3:])) > 2  # the penalties moved the greedy token
    assert set(out[1]) == {int(z[1].argmax())}  # no penalties: the plain argmax every step
