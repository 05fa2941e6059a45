"""The OpenAI-compatible server, driven with the official `openai` client, and fuzzed."""

from __future__ import annotations

import copy
import json
import random
import string

import pytest
import torch

openai = pytest.importorskip("openai", reason="the server tests need the openai client (pip install openai)")
httpx = pytest.importorskip("httpx")

from conftest import authed_server  # noqa: E402

import selar  # noqa: E402
from selar.server import Settings, start_in_thread  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(scope="module")
def server(tiny_thinking):
    srv = authed_server(tiny_thinking, max_tokens=64, default_max_tokens=16)
    yield srv
    srv.stop()


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sekret", max_retries=0)


def hf_greedy(model, prompt: str, max_new_tokens: int, **kw) -> list[int]:
    """transformers' own greedy continuation of a raw prompt, ending at the model's stop ids: an
    independent reference for what the server answers (kw: e.g. min_new_tokens)."""
    ids = torch.tensor([selar.format_prompt(model, prompt, raw=True)])
    out = model.hf_model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=list(model.stop_ids),
        pad_token_id=model.pad_id,
        **kw,
    )
    return out[0, ids.shape[1] :].tolist()


@pytest.fixture(scope="module")
def early_stop(tiny):
    """`tiny` whose stop id is the 5th token of its greedy continuation of "clips": that row ends
    after 5 tokens unless min_new_tokens holds the stop id off (the random model never draws <eos>)."""
    free = selar.generate(tiny, "clips", "cot", raw=True, temperature=0, max_new_tokens=8)[0].token_ids
    assert free[4] not in free[:4]
    model = selar.wrap(copy.deepcopy(tiny.hf_model), tiny.tokenizer, name="tiny", compile="off")
    model.stop_ids = [free[4]]
    return model


def test_chat_matches_the_api(client, tiny_thinking):
    r = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "How many clips?"}],
        max_tokens=12,
        temperature=0,
        extra_body={"method": "selar", "tau": 0.3},
    )
    ref = selar.generate(tiny_thinking, "How many clips?", "selar", tau=0.3, temperature=0, max_new_tokens=12)[0]
    assert r.usage.completion_tokens == ref.num_tokens
    assert r.usage.model_extra["soft_steps"] == ref.num_soft_steps
    msg = r.choices[0].message
    if "</think>" in ref.text:
        assert (msg.content.strip(), msg.model_extra["reasoning_content"]) == (ref.answer, ref.reasoning)
    else:  # reasoning never closed: all of it is reasoning, as reasoning servers report it
        assert msg.content == "" and msg.model_extra["reasoning_content"] == ref.text.replace("<think>", "").strip()


def test_completion_and_models(client, tiny_thinking):
    """The text of a completion (a thinking model: its reasoning apart) is transformers' greedy
    continuation of the raw prompt; `min_new_tokens` is accepted (it used to answer 500)."""
    r = client.completions.create(
        model="tiny", prompt="2 + 3 =", max_tokens=5, temperature=0, extra_body={"method": "cot", "min_new_tokens": 3}
    )
    ref = hf_greedy(tiny_thinking, "2 + 3 =", 5, min_new_tokens=3)
    text = tiny_thinking.tokenizer.decode(ref, skip_special_tokens=True)
    reasoning, _, answer = text.rpartition("</think>") if "</think>" in text else (text, "", "")
    assert r.choices[0].text == answer
    assert r.choices[0].model_extra["reasoning_content"] == reasoning.replace("<think>", "").strip()
    assert r.usage.completion_tokens == len(ref) >= 3
    assert r.choices[0].finish_reason == ("stop" if ref[-1] in tiny_thinking.stop_ids else "length")
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_min_new_tokens_in_requests_holds_off_the_stop_id(early_stop):
    """Issue 27: any request with min_new_tokens >= 2 answered 500. The completion holds off its stop
    id for that many tokens, its text as transformers' generate(min_new_tokens=...) writes it."""
    srv = authed_server(early_stop, max_tokens=16, default_max_tokens=16)
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="sekret", max_retries=0)
        lengths = []
        for n in (0, 1, 2, 6, 7):
            r = client.completions.create(
                model="tiny",
                prompt="clips",
                max_tokens=12,
                temperature=0,
                extra_body={"method": "cot", "min_new_tokens": n},
            )
            ref = hf_greedy(early_stop, "clips", 12, min_new_tokens=n)
            assert r.choices[0].text == early_stop.tokenizer.decode(ref, skip_special_tokens=True), n
            assert r.usage.completion_tokens == len(ref) > n and ref[-1] in early_stop.stop_ids, n
            assert r.choices[0].finish_reason == "stop" and r.model_extra["selar"]["finish_reason"] == "stop"
            lengths.append(len(ref))
        assert lengths[0] == 5 and lengths[-1] > lengths[-2] > 5  # the stop id was held off, then drawn
    finally:
        srv.stop()


def test_server_wide_min_new_tokens_default(early_stop):
    """`selar serve --set min_new_tokens=6`: every request failed (500); now a request without it
    holds the stop id off for 6 tokens, and a request's own value wins."""
    srv = start_in_thread(early_stop, Settings(model_name="tiny", max_tokens=16, defaults={"min_new_tokens": 6}))
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            for extra, n in (({}, 6), ({"min_new_tokens": 0}, 0), ({"min_new_tokens": 7}, 7)):
                body = {"prompt": "clips", "max_tokens": 12, "temperature": 0, "method": "cot", **extra}
                r = http.post("/v1/completions", json=body)
                assert r.status_code == 200, r.text
                ref = hf_greedy(early_stop, "clips", 12, min_new_tokens=n)
                choice = r.json()["choices"][0]
                assert choice["text"] == early_stop.tokenizer.decode(ref, skip_special_tokens=True), extra
                assert r.json()["usage"]["completion_tokens"] == len(ref) > n, extra
            # a budget below the server's default: the default holds the stop id off to the end of it
            body = {"prompt": "clips", "max_tokens": 4, "temperature": 0, "method": "cot"}
            r = http.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] == 4
    finally:
        srv.stop()


def test_streaming_chat_equals_non_streaming(client):
    kw = dict(
        model="tiny",
        messages=[{"role": "user", "content": "Weng earns $12 an hour."}],
        max_tokens=14,
        temperature=0.8,
        seed=3,
        extra_body={"method": "swir"},
    )
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices
    )
    assert content == full.choices[0].message.content
    assert reasoning.strip() == full.choices[0].message.model_extra["reasoning_content"]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason


def test_streaming_completion(client):
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt="First, 48 / 2 = 24.",
            max_tokens=8,
            stream=True,
            temperature=0,
            extra_body={"method": "soft-thinking"},
        )
    )
    assert chunks and chunks[-1].choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize(
    "kw,status,match",
    [
        (dict(extra_body={"method": "beam"}), 400, "unknown method"),
        (dict(extra_body={"tau": 3}), 400, "tau must be in"),
        (dict(extra_body={"tau": "high"}), 400, "tau must be a number"),
        (dict(extra_body={"tua": 0.3}), 400, "unknown field"),
        (dict(extra_body={"method": "cot", "tau": 0.3}), 400, "has no option"),
        (dict(max_tokens=10_000), 400, "max_tokens"),
        (dict(temperature=-1), 400, "temperature"),
        (dict(model="gpt-4"), 404, "not served"),
    ],
)
def test_errors(client, kw, status, match):
    args = dict(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    args.update(kw)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(**args)
    assert e.value.status_code == status and match in e.value.message


def test_empty_messages_and_auth(server, client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[])
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "  "}])
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_queue_full_answers_503(tiny):
    srv = start_in_thread(tiny, Settings(model_name="tiny", max_tokens=400), max_batch=1, max_queue=1)
    try:
        import concurrent.futures as cf

        body = {"model": "tiny", "prompt": "clips", "max_tokens": 400, "temperature": 0, "method": "cot"}
        with cf.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: httpx.post(srv.url + "/v1/completions", json=body, timeout=120), range(8)))
        statuses = sorted(r.status_code for r in codes)
        assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}
        busy = next(r for r in codes if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and busy.json()["error"]["type"] == "server_error"
    finally:
        srv.stop()


# (extra fields, the field the 400 names): each killed the decode thread, or gave 500 (issue 19)
ISSUE_19 = [
    ({"seed": 2**63}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"seed": 10**30}, "seed"),
    ({"method": "selar", "k": 10**6}, "k"),
    ({"method": "selar", "k": 2**63 - 1}, "k"),
    ({"method": "selar", "k": 2**64}, "k"),
    ({"method": "swir", "answer_prefix": True}, "answer_prefix"),
    ({"method": "swir", "answer_prefix": -1}, "answer_prefix"),
    ({"method": "swir", "answer_prefix": 2.5}, "answer_prefix"),
    ({"method": "swir", "answer_prefix": float("nan")}, "answer_prefix"),
    ({"method": "swir", "max_switch_count": 2**63}, "max_switch_count"),
    ({"method": "swir", "max_switch_count": -(2**70)}, "max_switch_count"),
    # a model without latent heads: the method itself is refused, whatever its options
    ({"method": "adaptive-latent"}, "method"),
    ({"method": "adaptive-latent", "max_latent_steps": 0}, "method"),
    ({"method": "adaptive-latent", "max_latent_steps": None}, "method"),
    ({"method": "adaptive-latent", "stop_threshold": 0}, "method"),
    ({"method": "adaptive-latent", "stop_threshold": None}, "method"),
    ({"temperature": 10**30}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"temperature": float("-inf")}, "temperature"),
    ({"top_p": float("nan")}, "top_p"),
    ({"tau": float("nan")}, "tau"),
    ({"max_tokens": 2**64}, "max_tokens"),
    ({"model": "\ud800"}, "model"),
    ({"\ud800": 1}, "body"),
    ({"stop": ["\udfff"]}, "stop"),
    ({"method": "\ud800x"}, "method"),
]


def _hostile_requests(n: int, seed: int = 0):
    rng = random.Random(seed)
    paths = ["/v1/chat/completions", "/v1/completions"]
    good = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    values = [
        None,
        True,
        -1,
        0,
        1e308,
        float("inf"),
        "",
        "x" * 50,
        [],
        {},
        [1, 2],
        {"a": {"b": []}},
        "\u0000",
        2**70,
        -0.0,
        "selar",
        [{"role": "user"}],
        [{"role": 5, "content": "x"}],
    ]
    keys = [
        "messages",
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "tau",
        "k",
        "method",
        "stream",
        "seed",
        "stop",
        "model",
        "push_weight",
        "n",
        "stream_options",
        "raw",
        "gate_scope",
        "window",
        "zzz",
    ]
    for i in range(n):
        kind = i % 7
        path = rng.choice(paths)
        if kind == 6:  # the classes of issue 19: each killed the decode thread, or gave 500
            body = dict(good if path.endswith("chat/completions") else {"prompt": "hi", "max_tokens": 2})
            body.update(rng.choice(ISSUE_19)[0])
            if rng.random() < 0.5:
                body["stream"] = True
            yield path, json.dumps(body).encode(), {"content-type": "application/json"}
            continue
        if kind == 0:  # broken JSON
            body = json.dumps(good)[: rng.randint(0, 40)] + rng.choice(["", "}", "]]", "\x00", "{{"])
            yield path, body.encode(), {"content-type": "application/json"}
        elif kind == 1:  # random bytes
            yield path, bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200))), {}
        elif kind == 2:  # wrong types or values in known fields
            body = dict(good)
            for _ in range(rng.randint(1, 3)):
                body[rng.choice(keys)] = rng.choice(values)
            body["max_tokens"] = rng.choice([0, -1, "2", 2.5, 10**9, True])  # always one invalid value
            yield path, json.dumps(body, allow_nan=True).encode(), {"content-type": "application/json"}
        elif kind == 3:  # not an object
            yield path, json.dumps(rng.choice([[], "str", 1, None, [good]])).encode(), {}
        elif kind == 4:  # deep nesting and oversize
            depth = rng.choice([50, 5000])
            nested = ("[" * depth + "]" * depth).encode()
            yield path, nested if rng.random() < 0.5 else b"{" + b'"a":' * 3 + b"1" + b"}", {}
        else:  # unknown extra fields / bad auth / huge body
            if rng.random() < 0.3:
                yield path, b'{"model": "tiny", "prompt": "' + b"a" * (70 * 1024) + b'"}', {}
            else:
                body = dict(good, **{"".join(rng.choices(string.ascii_letters, k=6)): rng.choice(values[:6])})
                yield path, json.dumps(body).encode(), {"authorization": rng.choice(["", "Bearer x", "Basic y"])}


@pytest.mark.parametrize("extra,param", ISSUE_19, ids=lambda e: json.dumps(e)[:40])
@pytest.mark.parametrize("stream", [False, True])
def test_issue_19_classes(server, extra, param, stream):
    """Requests that killed the decode thread (or gave 500) are a 400 naming the field, the server
    stays healthy, and a good request still works."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
        "stream": stream,
        **extra,
    }
    with httpx.Client(base_url=server.url, timeout=60, headers={"authorization": "Bearer sekret"}) as http:
        r = http.post(
            "/v1/chat/completions", content=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param, r.text
        assert http.get("/health").json()["status"] == "ok"
        good = http.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        )
        assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize(
    "extra",
    [
        {"method": "soft-thinking", "cold_stop": "no"},
        {"method": "swir", "protect_symbols": 1},
        {"method": "selar", "gate": "false"},
        {"method": "selar", "gate_scope": 5},
        {"ignore_eos": 0},
        {"soft_scope": True},
    ],
)
def test_boolean_and_text_options_are_type_checked(client, extra):
    name = next(k for k in extra if k != "method")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2, extra_body=extra
        )
    assert e.value.body["param"] == name and name in e.value.message


def test_lone_surrogates_in_content_give_400(server):
    with httpx.Client(base_url=server.url, timeout=60, headers={"authorization": "Bearer sekret"}) as http:
        for raw in (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', b'{"prompt": "a\\udc00b"}'):
            path = "/v1/chat/completions" if b"messages" in raw else "/v1/completions"
            r = http.post(path, content=raw)
            assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"], r.text


def test_every_option_at_its_extremes(server):
    """Each option of each method (and each sampling setting) at extreme values of every JSON type:
    200 or 400, never a 5xx; the server is healthy afterwards."""
    import dataclasses

    from selar.config import SAMPLING_FIELDS
    from selar.methods import METHODS

    values = [True, -1, 0, 2**63 - 1, -(2**63), 1e308, -1e-308, "x"]
    seen, codes = set(), {}
    with httpx.Client(base_url=server.url, timeout=60, headers={"authorization": "Bearer sekret"}) as http:
        for name, spec in METHODS.items():
            fields = [f.name for f in dataclasses.fields(spec.options)]
            if spec.options in seen:
                continue
            seen.add(spec.options)
            if name == "cot":
                fields += [f for f in SAMPLING_FIELDS if f != "max_new_tokens"]
            for f in fields:
                for v in values:
                    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "method": name, f: v}
                    r = http.post("/v1/chat/completions", json=body)
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    assert r.status_code in (200, 400), (name, f, v, r.status_code, r.text[:200])
                    if r.status_code == 400:
                        assert r.json()["error"]["param"] in (f, "method"), (name, f, v, r.text)
        assert http.get("/health").json()["status"] == "ok"
    assert codes.get(200) and codes.get(400)


def test_fuzz_1000_hostile_requests(server):
    statuses = {}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for path, body, headers in _hostile_requests(1000):
            headers = {"authorization": "Bearer sekret", **headers}
            r = http.post(path, content=body, headers=headers)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert 400 <= r.status_code < 500, (r.status_code, body[:200], r.text[:200])
            err = r.json()["error"]
            assert isinstance(err["message"], str) and err["message"]
        assert http.get("/health").json()["status"] == "ok"
    assert sum(statuses.values()) == 1000


def test_stop_strings_in_requests(tiny):
    srv = start_in_thread(tiny, Settings(model_name="tiny"))
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        base = dict(model="tiny", prompt="How many clips?", max_tokens=20, temperature=0, extra_body={"method": "cot"})
        full = client.completions.create(**base).choices[0].text
        assert full == tiny.tokenizer.decode(hf_greedy(tiny, "How many clips?", 20), skip_special_tokens=True)
        stop = full[len(full) // 2 :][:3]
        cut = client.completions.create(stop=[stop], **base).choices[0]
        assert cut.finish_reason == "stop" and stop not in cut.text and full.startswith(cut.text)
        assert len(cut.text) < len(full)
        streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, stop=[stop], **base))
        assert streamed == cut.text
    finally:
        srv.stop()


def test_metrics_in_prometheus_text_format(tiny):
    """/metrics parses as the Prometheus text format, and its counters equal what the clients saw."""
    import re

    srv = start_in_thread(tiny, Settings(model_name="tiny", max_tokens=16))
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        usages = [
            client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": q}], max_tokens=8, extra_body={"method": "selar"}
            ).usage
            for q in ("How many clips?", "Weng earns $12", "hi")
        ]
        for _ in range(2):
            with pytest.raises(openai.BadRequestError):
                client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], top_p=2)
        text = httpx.get(srv.url + "/metrics").text
        samples, typed = {}, set()
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                name, kind = line.split()[2:4]
                assert kind in ("counter", "gauge") and name not in typed
                typed.add(name)
            elif not line.startswith("# HELP "):
                m = re.fullmatch(r'([a-z_]+)(\{[a-z_]+="[^"]*"(?:,[a-z_]+="[^"]*")*\})? (-?[0-9.e+-]+|NaN)', line)
                assert m and m.group(1) in typed, line
                samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
        assert samples['selar_requests_total{path="/v1/chat/completions",status="200"}'] == 3
        assert samples['selar_requests_total{path="/v1/chat/completions",status="400"}'] == 2
        assert samples["selar_tokens_total"] == sum(u.completion_tokens for u in usages)
        assert samples["selar_soft_steps_total"] == sum(u.model_extra["soft_steps"] for u in usages)
        assert samples["selar_queue_length"] == samples["selar_running_rows"] == 0
        assert samples["selar_healthy"] == 1 and samples['selar_faults_total{kind="server"}'] == 0
    finally:
        srv.stop()


def test_reasoning_under_both_field_names_and_methods_in_models(client, tiny_thinking):
    """Issue 22: reasoning servers' clients read `reasoning_content` or (vLLM now) `reasoning`; /v1/models
    lists the methods this engine can run."""
    kw = dict(model="tiny", messages=[{"role": "user", "content": "How many clips?"}], max_tokens=10, temperature=0)
    msg = client.chat.completions.create(**kw).choices[0].message
    assert msg.model_extra["reasoning"] == msg.model_extra["reasoning_content"] != ""
    chunks = [c for c in client.chat.completions.create(stream=True, **kw) if c.choices]
    extra = [c.choices[0].delta.model_extra or {} for c in chunks]
    assert "".join(e.get("reasoning") or "" for e in extra) == "".join(e.get("reasoning_content") or "" for e in extra)
    assert "".join(e.get("reasoning") or "" for e in extra).strip() == msg.model_extra["reasoning"]
    card = client.models.list().data[0]
    assert set(card.model_extra["capabilities"]["methods"]) == set(selar.METHODS)  # transformers feeds every kind


def test_server_wide_seed_and_max_new_tokens_defaults_hold(tiny):
    """`selar serve --set seed=7 --set max_new_tokens=5`: a request without them uses them (the
    server used to draw a random seed and its own default length over them); a request's own wins."""
    from selar.server.protocol import parse_request

    settings = Settings(
        model_name="tiny", max_tokens=64, default_max_tokens=16, defaults={"seed": 7, "max_new_tokens": 5}
    )
    body = {"prompt": "Hi", "method": "selar", "temperature": 0.7}
    cfg = parse_request(dict(body), "completion", tiny, settings).config
    assert (cfg.sampling.seed, cfg.sampling.max_new_tokens) == (7, 5)
    cfg = parse_request({**body, "seed": 3, "max_tokens": 9}, "completion", tiny, settings).config
    assert (cfg.sampling.seed, cfg.sampling.max_new_tokens) == (3, 9)
    plain = Settings(model_name="tiny", max_tokens=64, default_max_tokens=16)
    seeds = {parse_request(dict(body), "completion", tiny, plain).config.sampling.seed for _ in range(4)}
    assert len(seeds) > 1 and parse_request(dict(body), "completion", tiny, plain).config.sampling.max_new_tokens == 16


class _OpenAIPenalties:
    """transformers LogitsProcessor: OpenAI's presence and frequency penalties over the tokens after
    the prompt (after transformers' own repetition penalty, vLLM's order)."""

    def __init__(self, start: int, presence: float, frequency: float):
        self.start, self.presence, self.frequency = start, presence, frequency

    def __call__(self, input_ids, scores):
        counts = torch.zeros_like(scores).scatter_add_(
            1, input_ids[:, self.start :], torch.ones_like(input_ids[:, self.start :], dtype=scores.dtype)
        )
        return scores - self.frequency * counts - self.presence * (counts > 0)


def test_penalties_in_requests_apply_as_in_the_api(client, tiny_thinking):
    """presence_penalty and frequency_penalty (OpenAI's fields; the server used to ignore them) and
    repetition_penalty apply: the completion is transformers' greedy continuation under its
    repetition penalty and OpenAI's formula, and differs from the plain one. Bad values are a 400
    naming the field."""
    from transformers import LogitsProcessorList

    prompt, n = "2 + 3 = 5. 2 + 3 =", 16
    kw = dict(model="tiny", prompt=prompt, max_tokens=n, temperature=0)
    r = client.completions.create(
        **kw, presence_penalty=1.5, frequency_penalty=0.5, extra_body={"method": "cot", "repetition_penalty": 1.3}
    )
    start = len(selar.format_prompt(tiny_thinking, prompt, raw=True))
    extra = LogitsProcessorList([_OpenAIPenalties(start, 1.5, 0.5)])
    ref = hf_greedy(tiny_thinking, prompt, n, repetition_penalty=1.3, logits_processor=extra)
    plain = hf_greedy(tiny_thinking, prompt, n)
    assert ref != plain  # the penalties change this continuation
    text = tiny_thinking.tokenizer.decode(ref, skip_special_tokens=True)
    reasoning, _, answer = text.rpartition("</think>") if "</think>" in text else (text, "", "")
    assert r.choices[0].text == answer
    assert r.choices[0].model_extra["reasoning_content"] == reasoning.replace("<think>", "").strip()
    assert r.usage.completion_tokens == len(ref)
    for field, value in (("presence_penalty", 2.5), ("frequency_penalty", -3), ("repetition_penalty", 0)):
        with pytest.raises(openai.BadRequestError, match=field):
            client.completions.create(**kw, extra_body={"method": "cot", field: value})
