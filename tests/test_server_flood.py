"""The server under floods and bad clients (issue 19): clients that disconnect in every phase
leave no row, job or session behind and no memory growth; long prompts are prefilled in chunks
between decode steps (a short request is not held for a long one's whole prefill); prompts are
tokenised off the event loop; a body that never arrives times out."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import random
import socket
import threading
import time

import pytest
import torch

openai = pytest.importorskip("openai", reason="the server tests need the openai client (pip install openai)")
httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")

from conftest import make_model, make_tokenizer  # noqa: E402

import selar  # noqa: E402
from selar.decode import new_session  # noqa: E402
from selar.engines.transformers import TransformersEngine  # noqa: E402
from selar.server import Settings, start_in_thread  # noqa: E402
from selar.server.prefill import Prefilled, transformers_chunks  # noqa: E402

WORDS = [
    "Natalia",
    "sold",
    "clips",
    "to",
    "48",
    "of",
    "her",
    "friends",
    "in",
    "April",
    "and",
    "then",
    "half",
    "as",
    "many",
    "May",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


class SlowEngine(TransformersEngine):
    """The transformers engine with a delay per forward call and per input token (a slow model)."""

    per_call = 0.0
    per_token = 0.0

    def _forward(self, embeds, position_ids):
        time.sleep(self.per_call + self.per_token * embeds.shape[0] * embeds.shape[1])
        return super()._forward(embeds, position_ids)


def slow_model(per_call: float, per_token: float):
    tok = make_tokenizer()
    m = selar.wrap(make_model(tok), tok, name="tiny")
    engine = type("Slow", (SlowEngine,), {"per_call": per_call, "per_token": per_token})
    m.make_engine = lambda: engine(m.hf_model, pad_id=m.pad_id)
    return m


def long_text(tok, n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = []
    while len(tok.encode(" ".join(words))) < n:
        words += rng.sample(WORDS, 4)
    return " ".join(words)


def settled(srv, timeout: float = 30.0):
    deadline = time.time() + timeout
    while True:
        s = srv.scheduler.state()
        if (
            not (s.jobs or s.running or s.queued or s.sessions or s.prefilling or s.per_job_state)
            or time.time() > deadline
        ):
            return s
        time.sleep(0.05)


async def _client(http, i: int, rng: random.Random, prompts: list[str]) -> str:
    """One streaming client that goes away at a random point (or reads to the end)."""
    body = {
        "model": "tiny",
        "prompt": rng.choice(prompts),
        "max_tokens": rng.choice([8, 16, 32]),
        "stream": True,
        "method": rng.choice(["cot", "selar", "soft-thinking"]),
        "temperature": 0.7,
        "seed": i,
    }
    how = rng.choice(["early", "events", "events", "full"])
    if how == "early":  # gone before the first event: while queued, prefilling, or before the response
        task = asyncio.ensure_future(http.post("/v1/completions", json=body))
        await asyncio.sleep(rng.uniform(0, 0.05))
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, httpx.HTTPError):
            pass
        return how
    k = rng.randint(0, 12) if how == "events" else 10**6
    async with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        n, last = 0, ""
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                n, last = n + 1, line
                if n > k:
                    return how  # leaves the stream mid-way
        assert last == "data: [DONE]"
    return how


def test_200_streaming_clients_that_disconnect_leave_nothing_behind(tiny):
    srv = start_in_thread(
        tiny, Settings(model_name="tiny", max_tokens=32, timeout=120), max_batch=32, max_queue=256, prefill_chunk=64
    )
    rng = random.Random(0)
    prompts = ["hi", "How many clips?", long_text(tiny.tokenizer, 100), long_text(tiny.tokenizer, 200, 1)]
    proc = psutil.Process()

    async def wave(n: int, start: int) -> list[str]:
        limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=limits) as http:
            return await asyncio.gather(*[_client(http, start + i, rng, prompts) for i in range(n)])

    try:
        asyncio.run(wave(20, 0))  # warm-up: caches, thread pools, allocator
        assert settled(srv).jobs == 0
        gc.collect()
        rss0 = proc.memory_info().rss
        t0 = time.time()
        kinds = asyncio.run(wave(200, 1000))
        s = settled(srv)
        gc.collect()
        rss1 = proc.memory_info().rss
        left = dict(
            jobs=s.jobs,
            running=s.running,
            prefilling=s.prefilling,
            queued=s.queued,
            sessions=s.sessions,
            per_job_state=s.per_job_state,
            pending=len(srv.scheduler.pending),
        )
        how = ", ".join(f"{k} {kinds.count(k)}" for k in sorted(set(kinds)))
        print(
            f"\n200 disconnecting streaming clients ({how}) in {time.time() - t0:.1f} s: left behind {left}; "
            f"RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB "
            f"({(rss1 - rss0) / 2**20:+.1f} MiB, margin 64 MiB)"
        )
        assert all(v == 0 for v in left.values()), left
        assert rss1 - rss0 < 64 * 2**20
        assert httpx.get(srv.url + "/health").json()["status"] == "ok"
    finally:
        srv.stop()


def test_a_non_streaming_client_that_leaves_frees_its_row():
    model = slow_model(per_call=0.02, per_token=0.0)
    srv = start_in_thread(model, Settings(model_name="tiny", max_tokens=400), max_batch=1, max_queue=8)
    try:
        # greedy, this prompt runs to 200 tokens (no stop id): ~4 s of work; the client leaves after 1 s
        body = {"prompt": "How many clips?", "max_tokens": 200, "method": "cot", "temperature": 0}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/v1/completions", json=body, timeout=1.0)
        s = settled(srv, timeout=5)
        assert (s.jobs, s.running, s.sessions) == (0, 0, 0)
        assert s.tokens < 150  # cancelled mid-way, not decoded to its end
        # queued behind a row that decodes: the client leaves, the job is dropped from the queue
        with cf.ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, srv.url + "/v1/completions", json={**body, "max_tokens": 60}, timeout=60)
            while srv.scheduler.state().running == 0:
                time.sleep(0.02)
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(srv.url + "/v1/completions", json=body, timeout=0.5)
            deadline = time.time() + 2
            while srv.scheduler.state().queued and time.time() < deadline:
                time.sleep(0.02)
            assert srv.scheduler.state().queued == 0 and not first.done()  # dropped while the first still runs
            assert first.result().status_code == 200
    finally:
        srv.stop()


def test_chunked_prefill_lets_a_short_request_through(tiny):
    """A 2-token request sent while a ~400-token prompt is being prefilled finishes before that
    prefill does (chunks of 32 tokens between decode steps); without chunks it waits for it."""
    model = slow_model(per_call=0.005, per_token=0.003)  # the long prefill: ~1.2 s of work
    text = long_text(model.tokenizer, 400)
    waits = {}
    for chunk in (32, 0):
        srv = start_in_thread(model, Settings(model_name="tiny", max_tokens=8), max_batch=4, prefill_chunk=chunk)
        try:
            with cf.ThreadPoolExecutor(1) as pool:
                long = pool.submit(
                    httpx.post,
                    srv.url + "/v1/completions",
                    timeout=60,
                    json={"prompt": text, "max_tokens": 1, "temperature": 0, "method": "cot"},
                )
                time.sleep(0.3)  # the long prefill has begun
                t0 = time.time()
                short = httpx.post(srv.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
                waits[chunk] = (time.time() - t0, long.done())
                assert short.status_code == 200 and long.result().status_code == 200
            want = selar.generate(model, [text], "cot", temperature=0, max_new_tokens=1, raw=True)[0].text
            assert long.result().json()["choices"][0]["text"] == want
        finally:
            srv.stop()
    print(
        f"\n2-token request behind a 400-token prompt: {waits[32][0]:.2f} s with chunked prefill, "
        f"{waits[0][0]:.2f} s without"
    )
    assert waits[32][1] is False  # finished while the long prompt was still prefilling
    assert waits[0][1] is True  # without chunks it waited for the whole prefill (and the long row's step)


def test_chunked_prefill_joins_rows_as_one_prefill_does(tiny):
    """A long prompt joined in chunks, with the running rows stepping between chunks, decodes the
    same tokens as each prompt alone (greedy); its logits equal a one-call prefill's. Batched and
    chunked is other arithmetic than alone: the rows feed tokens (cot), which a rounding difference
    cannot move unless it decides a near-tie, where soft inputs would carry it on and part."""
    long = tiny.tokenizer.encode(long_text(tiny.tokenizer, 300))
    shorts = [tiny.tokenizer.encode(t) for t in ("How many clips?", "Weng earns $12")]
    one = tiny.make_engine().add([long])
    chunked = list(transformers_chunks(tiny.make_engine(), [long], 32))
    assert all(c is None for c in chunked[:-1]) and len(chunked) == -(-len(long) // 32)
    torch.testing.assert_close(chunked[-1], one, atol=1e-4, rtol=1e-4)

    cfg = selar.make_config("cot", temperature=0, max_new_tokens=16)
    sess = new_session(tiny, cfg)
    out = {}
    sess.add(shorts, [0, 1], [0, 0])
    chunks = transformers_chunks(sess.engine, [long], 32)
    for _ in range(len(chunked) - 1):
        assert next(chunks) is None
        out.update({r.id: r.token_ids for r in sess.step()})
    inner, sess.engine = sess.engine, Prefilled(chunks)
    sess.add([long], [2], [0])
    sess.engine = inner
    while sess.size:
        out.update({r.id: r.token_ids for r in sess.step()})
    for i, p in enumerate(shorts + [long]):
        want = selar.generate(tiny, [""], "cot", prompt_token_ids=[p], temperature=0, max_new_tokens=16)[0]
        assert out[i] == want.token_ids, i


def test_prompts_are_tokenised_off_the_event_loop():
    """Three ~1 MB prompts at once: the tokenizer runs on worker threads, /health keeps answering,
    and a prompt far over the limit is refused from a prefix, without tokenising all of it."""
    tok = make_tokenizer()
    model = selar.wrap(make_model(tok), tok, name="tiny")
    threads, sizes = set(), []
    encode = tok.encode

    def recording(text, *a, **kw):
        threads.add(threading.current_thread().name)
        sizes.append(len(text))
        return encode(text, *a, **kw)

    big = long_text(tok, 400) * 600  # ~1 MB
    tok.encode = recording
    srv = start_in_thread(model, Settings(model_name="tiny", max_body_bytes=4 << 20))
    lat, stop = [], threading.Event()

    def poll():
        with httpx.Client(base_url=srv.url) as c:
            while not stop.is_set():
                t = time.perf_counter()
                assert c.get("/health").status_code == 200
                lat.append(time.perf_counter() - t)
                time.sleep(0.01)

    try:
        poller = threading.Thread(target=poll)
        poller.start()
        with cf.ThreadPoolExecutor(3) as pool:
            rs = list(
                pool.map(lambda _: httpx.post(srv.url + "/v1/completions", json={"prompt": big}, timeout=60), range(3))
            )
        small = httpx.post(
            srv.url + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            timeout=60,
        )
        stop.set()
        poller.join()
        assert [r.status_code for r in rs] == [400] * 3 and small.status_code == 200
        assert "tokens; this server allows 511" in rs[0].json()["error"]["message"]
        assert threads and all(t.startswith("selar-parse") for t in threads), threads
        assert max(sizes) < len(big) / 4  # only a prefix of each big prompt was tokenised
        print(f"\n/health during three 1 MB prompts: max {max(lat) * 1000:.0f} ms over {len(lat)} polls")
        assert max(lat) < 0.5
    finally:
        stop.set()
        srv.stop()


def _read_until_closed(s: socket.socket) -> str:
    """Everything the server sends until it closes the connection (the reply says `connection: close`)."""
    parts = []
    while chunk := s.recv(4096):
        parts.append(chunk)
    return b"".join(parts).decode()


def test_a_body_that_never_arrives_times_out(tiny):
    srv = start_in_thread(tiny, Settings(model_name="tiny", body_timeout=1.0))
    try:
        host, port = srv.url[len("http://") :].split(":")
        with socket.create_connection((host, int(port)), timeout=30) as s:
            t0 = time.time()  # before the send: the server's clock cannot start earlier
            s.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"prompt": '
            )
            reply = _read_until_closed(s)  # headers and body may come in separate segments
            waited = time.time() - t0
        assert reply.startswith("HTTP/1.1 408") and "did not arrive within 1 s" in reply, reply
        assert 0.95 < waited < 20, waited  # the timeout, not the socket's own 30 s
        assert httpx.get(srv.url + "/health").status_code == 200
    finally:
        srv.stop()


def test_chunks_only_for_the_eager_row_layout(tiny):
    """An engine that keeps its rows its own way (e.g. the static-cache slots) is prefilled in one call."""
    from selar.server.prefill import chunks_for

    class OwnRows(TransformersEngine):
        def add(self, prompts):
            return super().add(prompts)

    assert chunks_for(TransformersEngine(tiny.hf_model, pad_id=tiny.pad_id)) is not None
    assert chunks_for(SlowEngine(tiny.hf_model, pad_id=tiny.pad_id)) is not None  # only _forward differs
    assert chunks_for(OwnRows(tiny.hf_model, pad_id=tiny.pad_id)) is None
