"""`selar serve` on its default path (issue 27): `--compile auto` with the server's declared work
runs the compiled static-cache engine, warmed up before the first request. The command itself runs
in this process (its uvicorn.run serves on a thread), on a tiny model saved to a folder: a
completion equals the eager engine's greedy decoding, and `--prefill-chunk` prefills a long prompt
in chunks on the static engine while a running row keeps decoding (before, the static engine had no
chunked prefill and a long prompt held every running row for its whole prefill).

One compilation of the tiny model (two graphs, a minute or two on a small CPU) serves the module."""

from __future__ import annotations

import concurrent.futures as cf
import socket
import threading
import time

import pytest
from conftest import make_model, make_tokenizer

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

import selar  # noqa: E402
import selar.server  # noqa: E402
from selar.cli import main  # noqa: E402
from selar.engines.transformers import slots  # noqa: E402
from selar.engines.transformers.static import StaticEngine  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

CHUNK = 32


class Served:
    """The running `selar serve`: its url, model and scheduler, and what its static engines did."""

    def __init__(self) -> None:
        self.url = self.folder = ""
        self.model = self.scheduler = self.server = None
        self.events: list[tuple[str, int]] = []  # ("step", rows) or ("chunk", last?)
        self.delay = 0.0  # seconds added to each step (a slower model)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    tok = make_tokenizer()
    make_model(tok, seed=3).save_pretrained(folder)
    tok.save_pretrained(folder)
    s = Served()
    s.folder = str(folder)
    real_build, real_step = selar.server.build, StaticEngine.step
    real_chunks = getattr(StaticEngine, "prefill_chunks", None)  # none before issue 27

    def build(model, settings, **kw):
        app, scheduler = real_build(model, settings, **kw)
        s.model, s.scheduler = model, scheduler
        return app, scheduler

    def run(app, host, port, log_level):  # `selar serve`'s uvicorn.run, on this thread
        s.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off"))
        s.server.run()

    def step(self, inputs):
        s.events.append(("step", len(self.slots)))
        time.sleep(s.delay)
        return real_step(self, inputs)

    def chunks(self, prompts, chunk):
        assert real_chunks is not None
        for out in real_chunks(self, prompts, chunk):
            s.events.append(("chunk", out is not None))
            yield out

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s.url = f"http://127.0.0.1:{port}"
    args = ["serve", "--model", str(folder), "--port", str(port), "--dtype", "float32", "--device", "cpu"]
    args += ["--max-batch", "4", "--prefill-chunk", str(CHUNK), "--method", "cot"]  # compile: the default
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(selar.server, "build", build)
        mp.setattr(uvicorn, "run", run)
        mp.setattr(StaticEngine, "step", step)
        if real_chunks is not None:
            mp.setattr(StaticEngine, "prefill_chunks", chunks)
        t0 = time.time()
        thread = threading.Thread(target=main.main, kwargs=dict(args=args, standalone_mode=False), daemon=True)
        thread.start()
        while not (s.server is not None and s.server.started) and thread.is_alive() and time.time() - t0 < 900:
            time.sleep(0.1)
        assert s.server is not None and s.server.started, "selar serve did not start"
        print(f"\nselar serve up in {time.time() - t0:.0f} s (compiling {s.model.compile_seconds:.0f} s)")
        try:
            yield s
        finally:
            s.server.should_exit = True
            thread.join(timeout=30)


@pytest.fixture(scope="module")
def eager(served):
    """The same weights on the eager engine, loaded apart (the server's model is in use)."""
    return selar.load_model(served.folder, dtype="float32", device="cpu", compile="off")


def complete(url: str, prompt: str, max_tokens: int) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "method": "cot"}
    r = httpx.post(url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def greedy(model, prompt: str, n: int):
    return selar.generate(model, [prompt], "cot", temperature=0, max_new_tokens=n, raw=True)[0]


def test_default_serve_runs_the_compiled_engine_and_answers_as_eager(served, eager):
    m = served.model
    step = slots.compiled(m.hf_model)
    assert m.compile == "auto" and isinstance(m.make_engine(), StaticEngine)
    assert step is not None and step.graphs >= 2 and step.compiled and not step.mismatch  # the check passed
    assert type(eager.make_engine()) is not StaticEngine
    prompt = "How many clips did Natalia sell in April and May?"
    served.events.clear()
    got = complete(served.url, prompt, 24)["choices"][0]["text"]
    assert ("step", 1) in served.events  # the static engine decoded it
    assert got == greedy(eager, prompt, 24).text


def test_long_prompt_is_prefilled_in_chunks_while_a_row_decodes(served, eager):
    tok = served.model.tokenizer
    short = "Weng earns $12 an hour for babysitting."
    long = " ".join(["Natalia sold 48 clips in April and half as many in May."] * 12)
    n = len(tok.encode(long))
    assert n > 8 * CHUNK
    want_short, want_long = greedy(eager, short, 150), greedy(eager, long, 4)
    assert want_short.finish_reason == "length"  # it decodes all along the long prompt's prefill
    served.events.clear()
    served.delay = 0.01
    try:
        with cf.ThreadPoolExecutor(2) as pool:
            first = pool.submit(complete, served.url, short, 150)
            t0 = time.time()
            while not any(e == ("step", 1) for e in list(served.events)) and time.time() - t0 < 60:
                time.sleep(0.01)
            second = pool.submit(complete, served.url, long, 4)
            got_short, got_long = first.result(), second.result()
    finally:
        served.delay = 0.0
    ev = served.events
    chunks = [i for i, e in enumerate(ev) if e[0] == "chunk"]
    assert len(chunks) == -(-n // CHUNK) and ev[chunks[-1]] == ("chunk", True)
    between = [e for e in ev[chunks[0] : chunks[-1]] if e[0] == "step"]
    assert len(between) >= len(chunks) - 1 and all(e == ("step", 1) for e in between)  # the short row went on
    assert ("step", 2) in ev[chunks[-1] :]  # then the long row joined it
    assert got_short["choices"][0]["text"] == want_short.text
    assert got_long["choices"][0]["text"] == want_long.text
