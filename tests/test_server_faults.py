"""Fault containment in the server (issue 19) and truthful streams (issue 16, bug 5): a method
that raises on chosen steps for one group of requests, on a real server driven by the `openai`
client. The other groups' concurrent requests complete with the same text as `selar.generate`,
later requests succeed, and /health and /metrics say what happened."""

from __future__ import annotations

import concurrent.futures as cf
import re
import time
from dataclasses import dataclass

import pytest

openai = pytest.importorskip("openai", reason="the server tests need the openai client (pip install openai)")
httpx = pytest.importorskip("httpx")

import selar  # noqa: E402
from selar.errors import CapacityError  # noqa: E402
from selar.methods import METHODS, MethodSpec, register  # noqa: E402
from selar.methods.cot import CoT, CoTOptions  # noqa: E402
from selar.server import Settings, start_in_thread  # noqa: E402

PROMPTS = [
    "How many clips did Natalia sell?",
    "Weng earns $12 an hour.",
    "First, 48 / 2 = 24.",
    "Then 48 + 24 = 72.",
    "0 1 2 3 4 5",
    "So the final answer is",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@dataclass
class FaultyOptions:
    fail_at: int = 3  # the step that raises (-1: none)
    fail_in: str = "step"  # "step" or "prefill"
    capacity: bool = False  # raise a CapacityError (else a RuntimeError)
    delay: float = 0.0  # seconds per step (a slow method)


class Faulty:
    """CoT that raises when any of its rows reaches step `fail_at` (or when its rows are added)."""

    name = "test-faulty"
    num_candidates = 3

    def __init__(self, options: FaultyOptions, vocab):
        self.o, self.inner = options, CoT(CoTOptions(), vocab)

    def _raise(self, where: str):
        raise (CapacityError if self.o.capacity else RuntimeError)(f"injected fault in {where}")

    def init_state(self, n, device):
        if self.o.fail_in == "prefill":
            self._raise("prefill")
        return self.inner.init_state(n, device)

    def step(self, ctx, state):
        if self.o.delay:
            time.sleep(self.o.delay)
        if self.o.fail_in == "step" and bool((ctx.step == self.o.fail_at).any()):
            self._raise("step")
        return self.inner.step(ctx, state)


@pytest.fixture(scope="module", autouse=True)
def faulty_method():
    register(MethodSpec("test-faulty", Faulty, FaultyOptions, inputs=frozenset({"token"})), replace=True)
    yield
    METHODS.pop("test-faulty", None)


def _server(model, **kw):
    return start_in_thread(
        model,
        Settings(model_name="tiny", max_tokens=400, default_max_tokens=16, timeout=60),
        **{"max_batch": 16, "max_queue": 64, **kw},
    )


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, (name, text)
    return float(m.group(1))


def test_a_fault_fails_only_its_group(tiny):
    """8 requests of a faulting group (4 streamed) among 12 others (3 methods, half streamed),
    all at once: the 8 get a server error, the 12 the same text as selar.generate. The server's
    sessions batch the rows, so its engine computes each row alone (tests/forced.py): the same
    arithmetic as a prompt decoded alone, so soft methods' texts are compared exactly."""
    import copy

    import forced

    from selar.engines import TransformersEngine

    hf, pad = tiny.hf_model, tiny.pad_id
    solo = copy.copy(tiny)
    solo.make_engine = lambda: forced.SoloEngine(lambda: TransformersEngine(hf, pad))
    srv = _server(solo)
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=120)

    def ask(i, method, stream, extra=None):
        kw = dict(
            model="tiny",
            prompt=PROMPTS[i % len(PROMPTS)],
            max_tokens=12,
            temperature=0,
            extra_body={"method": method, **dict(extra or ())},
        )
        try:
            if stream:
                chunks = list(client.completions.create(stream=True, **kw))
                return "".join(c.choices[0].text for c in chunks if c.choices), chunks[-1].choices[0].finish_reason
            r = client.completions.create(**kw)
            return r.choices[0].text, r.choices[0].finish_reason
        except openai.APIError as e:
            return e

    try:
        good = [(i, m, i % 2 == 0) for i in range(4) for m in ("cot", "selar", "soft-thinking")]
        bad = [(i, "test-faulty", i % 2 == 0, (("fail_at", 3),)) for i in range(8)]
        with cf.ThreadPoolExecutor(20) as pool:
            futures = {job: pool.submit(ask, *job) for job in good + bad}
            results = {job: f.result(timeout=120) for job, f in futures.items()}
        faulted = [results[j] for j in bad]
        for e in faulted:
            assert isinstance(e, openai.APIError), e
            assert "failed while decoding" in e.message and e.body["type"] == "server_error", e.body
        assert all(
            isinstance(e, openai.InternalServerError) and e.status_code == 500 for j, e in zip(bad, faulted) if not j[2]
        )  # streamed ones: an error event instead
        for i, m, stream in good:
            want = selar.generate(tiny, [PROMPTS[i % len(PROMPTS)]], m, temperature=0, max_new_tokens=12, raw=True)[0]
            assert results[(i, m, stream)] == (want.text, "length" if want.num_tokens == 12 else "stop"), (i, m)
        print(
            f"\nfault injection: {len(faulted)} faulted requests (all server errors), "
            f"{len(good)}/{len(good)} others completed identical to selar.generate"
        )
        # later requests succeed, and nothing is left behind
        assert ask(0, "cot", False) == results[(0, "cot", True)]
        assert ask(1, "test-faulty", True, (("fail_at", -1),))[1] in ("length", "stop")
        s = _settled(srv)
        assert (s.jobs, s.running, s.sessions, s.per_job_state) == (0, 0, 0, 0)
        assert s.failed_rows == 8 and s.faults >= 1
        text = httpx.get(srv.url + "/metrics").text
        assert _metric(text, 'selar_faults_total{kind="server"}') == s.faults
        assert _metric(text, "selar_failed_rows_total") == 8
        assert _metric(text, 'selar_stream_errors_total{type="server_error"}') == 4
        assert httpx.get(srv.url + "/health").status_code == 200
    finally:
        srv.stop()


def _settled(srv, timeout=20.0):
    deadline = time.time() + timeout
    while True:
        s = srv.scheduler.state()
        if (s.jobs, s.running, s.queued, s.sessions, s.prefilling) == (0, 0, 0, 0, 0) or time.time() > deadline:
            return s
        time.sleep(0.05)


def test_repeated_faults_turn_health_unhealthy_until_a_request_succeeds(tiny):
    srv = _server(tiny, fault_limit=3)
    try:
        body = {"prompt": "hi", "max_tokens": 8, "method": "test-faulty", "fail_at": 0}
        assert httpx.get(srv.url + "/health").status_code == 200
        for n in range(3):
            r = httpx.post(srv.url + "/v1/completions", json=body, timeout=60)
            assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
            assert httpx.get(srv.url + "/health").status_code == (200 if n < 2 else 503)
        h = httpx.get(srv.url + "/health")
        assert h.json()["status"] == "unhealthy" and "RuntimeError: injected fault in step" in h.json()["cause"]
        assert "3 faults in a row" in h.json()["error"]["message"]
        assert _metric(httpx.get(srv.url + "/metrics").text, "selar_healthy") == 0
        ok = httpx.post(
            srv.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 4, "method": "cot"}, timeout=60
        )
        assert ok.status_code == 200
        assert httpx.get(srv.url + "/health").status_code == 200
        assert _metric(httpx.get(srv.url + "/metrics").text, "selar_healthy") == 1
    finally:
        srv.stop()


@pytest.mark.parametrize("where", ["step", "prefill"])
def test_capacity_faults_answer_507_with_retry_after(tiny, where):
    srv = _server(tiny)
    try:
        body = {
            "prompt": "hi",
            "max_tokens": 8,
            "method": "test-faulty",
            "fail_at": 0,
            "fail_in": where,
            "capacity": True,
        }
        r = httpx.post(srv.url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 507 and r.headers["retry-after"] == "5", r.text
        assert r.json()["error"]["type"] == "capacity_error" and "injected fault" in r.json()["error"]["message"]
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIError, match="ran out of capacity"):
            list(client.completions.create(model="tiny", prompt="hi", max_tokens=8, stream=True, extra_body=body))
        assert 'selar_faults_total{kind="capacity"} 2' in httpx.get(srv.url + "/metrics").text
        assert (
            httpx.post(srv.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 3}, timeout=60).status_code
            == 200
        )
    finally:
        srv.stop()


def test_a_prefill_fault_spares_the_rows_already_decoding(tiny):
    """A request whose prefill faults fails alone: a (slow) request of another group, decoding
    meanwhile, completes with the text of selar.generate."""
    srv = _server(tiny)
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=120)
    try:
        with cf.ThreadPoolExecutor(2) as pool:
            other = pool.submit(
                client.completions.create,
                model="tiny",
                prompt=PROMPTS[0],
                max_tokens=40,
                temperature=0,
                extra_body={"method": "test-faulty", "fail_at": -1, "delay": 0.02, "capacity": True},
            )
            time.sleep(0.3)
            with pytest.raises(openai.InternalServerError, match="failed while decoding"):
                client.completions.create(
                    model="tiny", prompt="hi", max_tokens=4, extra_body={"method": "test-faulty", "fail_in": "prefill"}
                )
            r = other.result(timeout=120)
        want = selar.generate(tiny, [PROMPTS[0]], "cot", temperature=0, max_new_tokens=40, raw=True)[0]
        assert r.choices[0].text == want.text
    finally:
        srv.stop()


# -- issue 16, bug 5: a stream that ends in an error or a cancellation never says finish_reason "stop"


def test_bug5_a_stream_whose_row_fails_raises_instead_of_finishing(tiny):
    srv = start_in_thread(tiny, Settings(model_name="tiny", max_tokens=64), max_batch=4)
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
    try:
        seen = []
        with pytest.raises(openai.APIError) as e:
            for c in client.completions.create(
                model="tiny",
                prompt="How many clips?",
                max_tokens=20,
                stream=True,
                temperature=0,
                extra_body={"method": "test-faulty", "fail_at": 4},
            ):
                seen.append(c.choices[0].finish_reason)
        assert "stop" not in seen and e.value.body["code"] == 500
    finally:
        srv.stop()


def test_bug5_a_stream_whose_row_is_cancelled_raises_instead_of_finishing(tiny):
    srv = start_in_thread(tiny, Settings(model_name="tiny", max_tokens=200), max_batch=4)
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
    try:
        seen = []
        # (greedy, this prompt runs to 200 tokens)
        msgs = [{"role": "user", "content": "Weng earns $12 an hour."}]
        stream = client.chat.completions.create(
            model="tiny",
            messages=msgs,
            max_tokens=200,
            stream=True,
            temperature=0,
            extra_body={"method": "test-faulty", "fail_at": -1, "delay": 0.02},
        )
        with pytest.raises(openai.APIError):
            for i, c in enumerate(stream):
                seen.append(c.choices[0].finish_reason)
                if i == 3:  # the server cancels the row (as on shutdown)
                    for job_id in list(srv.scheduler.jobs):
                        srv.scheduler.cancel(job_id)
        assert "stop" not in seen and len(seen) < 100
    finally:
        srv.stop()
