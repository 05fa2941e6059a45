"""transformers' custom_generate entry (selar.integrations.hf_generate): `model.generate(...,
custom_generate=PATH)` loads the folder as transformers loads any such folder, and its output is
checked against transformers' own generate (CoT, greedy) and against selar.generate (selar)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import selar
from selar.errors import ConfigError
from selar.integrations import hub_folder

REPO_FOLDER = Path(__file__).resolve().parents[1] / "integrations" / "selar-generate"
PROMPTS = ["How many clips did Natalia sell altogether in April and May?", "2 + 3 ="]


def same_layout(model: selar.Model, raw: bool = True) -> list[str]:
    """PROMPTS in the order selar.generate batches them (shortest first): custom_generate decodes
    its rows in the order given, so both sides then run the same kernels on the same batch layout,
    and free-running soft decoding may be compared token for token."""
    return sorted(PROMPTS, key=lambda p: len(selar.format_prompt(model, p, raw=raw)))


def left_padded(model: selar.Model, prompts, raw: bool = True):
    enc = [selar.format_prompt(model, p, raw=raw) for p in prompts]
    n = max(map(len, enc))
    assert min(map(len, enc)) < n  # rows of different lengths: padding exercised
    ids = torch.tensor([[model.pad_id] * (n - len(e)) + e for e in enc])
    mask = torch.tensor([[0] * (n - len(e)) + [1] * len(e) for e in enc])
    return ids, mask, enc


def custom(model: selar.Model, ids, mask, **kw):
    return model.hf_model.generate(
        input_ids=ids, attention_mask=mask, custom_generate=str(REPO_FOLDER), trust_remote_code=True,
        tokenizer=model.tokenizer, **kw,
    )  # fmt: skip


def padded(results, pad: int) -> list[list[int]]:
    """selar.generate's tokens of each row, padded on the right to the longest, as generate pads."""
    width = max(len(r.token_ids) for r in results)
    return [r.token_ids + [pad] * (width - len(r.token_ids)) for r in results]


def test_hub_folder_is_the_committed_one(tmp_path):
    written = hub_folder.write(tmp_path / "f")
    for rel in hub_folder.FILES:
        assert (written / rel).read_text() == (REPO_FOLDER / rel).read_text(), rel
    committed = {p.relative_to(REPO_FOLDER).as_posix() for p in REPO_FOLDER.rglob("*") if p.is_file()}
    assert committed == set(hub_folder.FILES)


def test_cot_greedy_equals_generate_tiny(tiny):
    ids, mask, _ = left_padded(tiny, PROMPTS)
    kw = dict(max_new_tokens=20, do_sample=False, return_dict_in_generate=True, output_scores=True, output_logits=True)
    ref = tiny.hf_model.generate(input_ids=ids, attention_mask=mask, **kw)
    got = custom(tiny, ids, mask, method="cot", **kw)
    assert type(got).__name__ == "SelarGenerateOutput"
    assert torch.equal(got.sequences, ref.sequences)
    assert len(got.scores) == len(ref.scores) == 20
    for a, b in zip(got.scores, ref.scores):  # greedy: scores are the logits transformers saw
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(got.logits, ref.logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert got.finish_reasons == ["length", "length"] and got.num_soft_steps.tolist() == [0, 0]


def test_cot_greedy_plain_tensor_and_right_padding_tiny(tiny):
    ids, mask, enc = left_padded(tiny, PROMPTS)
    ref = tiny.hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    got = custom(tiny, ids, mask, method="cot", max_new_tokens=12)  # the model's config: greedy
    assert isinstance(got, torch.Tensor) and torch.equal(got, ref)
    n = ids.shape[1]  # the same prompts right-padded: the mask picks each row's tokens
    rids = torch.tensor([e + [tiny.pad_id] * (n - len(e)) for e in enc])
    rmask = torch.tensor([[1] * len(e) + [0] * (n - len(e)) for e in enc])
    right = custom(tiny, rids, rmask, method="cot", max_new_tokens=12)
    assert torch.equal(right[:, :n], rids) and torch.equal(right[:, n:], ref[:, n:])


def test_selar_sampled_equals_selar_generate_tiny(tiny):
    prompts = same_layout(tiny)
    ids, mask, enc = left_padded(tiny, prompts)
    opts = dict(tau=0.9, k=5, seed=11)
    got = custom(tiny, ids, mask, method="selar", do_sample=True, temperature=0.7, top_p=0.9, top_k=10,
                 max_new_tokens=16, return_dict_in_generate=True, output_scores=True, output_logits=True,
                 **opts)  # fmt: skip
    ref = selar.generate(tiny, prompts, "selar", raw=True, temperature=0.7, top_p=0.9, top_k=10, min_p=0.0,
                         max_new_tokens=16, **opts)  # fmt: skip
    assert got.sequences[:, ids.shape[1] :].tolist() == padded(ref, tiny.pad_id)
    assert got.num_soft_steps.tolist() == [r.num_soft_steps for r in ref] and sum(got.num_soft_steps) > 0
    # sampled scores, as transformers' warpers leave them: logits / temperature on the top-k then
    # top-p support (computed here from the raw logits), -inf elsewhere
    for step in (0, 5):
        raw, score = got.logits[step], got.scores[step]
        vals, top = (raw / 0.7).topk(10, dim=-1)
        p = vals.softmax(-1)
        keep = (p.cumsum(-1) - p) < 0.9
        want = torch.full_like(raw, float("-inf")).scatter(1, top, torch.where(keep, vals, float("-inf")))
        torch.testing.assert_close(score, want)
        assert 1 <= int(torch.isfinite(score[0]).sum()) < 10


def test_num_return_sequences_seeds_each_copy_tiny(tiny):
    ids, mask, _ = left_padded(tiny, PROMPTS)
    got = custom(tiny, ids, mask, method="cot", do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                 max_new_tokens=10, num_return_sequences=2, seed=5)  # fmt: skip
    assert got.shape[0] == 4
    for j in range(2):
        ref = selar.generate(tiny, PROMPTS, "cot", raw=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=10,
                             seed=5 + j)  # fmt: skip
        assert got[j::2][:, ids.shape[1] :].tolist() == padded(ref, tiny.pad_id)


def test_stop_strings_end_rows_tiny(tiny):
    ids, mask, _ = left_padded(tiny, PROMPTS)
    free = selar.generate(tiny, PROMPTS, "cot", raw=True, temperature=0, max_new_tokens=24)
    text = free[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]  # a string the first row writes mid-way
    got = custom(tiny, ids, mask, method="cot", max_new_tokens=24, stop_strings=[stop],
                 return_dict_in_generate=True)  # fmt: skip
    ref = selar.generate(tiny, PROMPTS, "cot", raw=True, temperature=0, max_new_tokens=24, stop=[stop])
    assert got.finish_reasons[0] == "stop_string" == ref[0].finish_reason
    assert got.sequences[:, ids.shape[1] :].tolist() == padded(ref, tiny.pad_id)
    assert len(ref[0].token_ids) < len(free[0].token_ids)


@pytest.mark.parametrize("least", [{"min_new_tokens": 6}, {"min_length": 6}], ids=["min_new_tokens", "min_length"])
def test_min_new_tokens_holds_off_eos_as_generate_does_tiny(tiny, least):
    """Issue 27: min_new_tokens (and min_length, which counts the input) were refused. As eos, tokens
    each row writes early end it early; held off for 6 new tokens, the rows run on, as in generate."""
    ids, mask, _ = left_padded(tiny, PROMPTS)
    n = ids.shape[1]
    free = tiny.hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False)[:, n:]
    eos = [int(free[0, 3]), int(free[1, 5])]  # row 0 writes the first as its 4th token, row 1 the second as its 6th
    kw = dict(max_new_tokens=16, do_sample=False, eos_token_id=eos, return_dict_in_generate=True, output_scores=True)
    early = custom(tiny, ids, mask, method="cot", **kw)
    assert early.finish_reasons == ["stop", "stop"] and early.sequences.shape[1] == n + 6
    if "min_length" in least:  # it counts the (padded) input, as transformers' min_length does
        least = {"min_length": n + least["min_length"]}
    ref = tiny.hf_model.generate(input_ids=ids, attention_mask=mask, **kw, **least)
    got = custom(tiny, ids, mask, method="cot", **kw, **least)
    assert torch.equal(got.sequences, ref.sequences)
    assert got.finish_reasons == ["stop", "stop"]
    lengths = [next(i + 1 for i, t in enumerate(row) if t in eos) for row in got.sequences[:, n:].tolist()]
    assert min(lengths) > 6 and max(lengths) == got.sequences.shape[1] - n
    assert len(got.scores) == len(ref.scores) == max(lengths)
    for step, (a, b) in enumerate(zip(got.scores, ref.scores)):  # eos at -inf in both while held off
        running = [i for i, k in enumerate(lengths) if step < k]  # generate goes on scoring finished rows
        torch.testing.assert_close(a[running], b[running], rtol=1e-4, atol=1e-4)
        assert bool(torch.isinf(a[:, eos]).all()) == (step < 6)


def test_min_new_tokens_beyond_the_budget_runs_to_it_tiny(tiny):
    """min_new_tokens above max_new_tokens is no error in generate: eos is held off to the end."""
    ids, mask, _ = left_padded(tiny, PROMPTS)
    n = ids.shape[1]
    free = tiny.hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)[:, n:]
    eos = [int(free[0, 3]), int(free[1, 5])]
    kw = dict(max_new_tokens=8, do_sample=False, eos_token_id=eos, min_new_tokens=20)
    ref = tiny.hf_model.generate(input_ids=ids, attention_mask=mask, **kw)
    got = custom(tiny, ids, mask, method="cot", **kw)
    assert torch.equal(got, ref) and got.shape[1] == n + 8


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"num_beams": 2}, "num_beams"),
        ({"repetition_penalty": 1.2}, "repetition_penalty"),
        ({"not_an_option": 1}, "does not take not_an_option"),
        ({"streamer": object()}, "streamer"),
        ({"method": "no-such-method"}, "no-such-method"),
        ({"tau": 2.0}, "tau"),
    ],
)
def test_refuses_what_it_does_not_implement(tiny, kw, match):
    ids, mask, _ = left_padded(tiny, PROMPTS)
    with pytest.raises(ConfigError, match=match):
        custom(tiny, ids, mask, max_new_tokens=4, **{"method": "selar", **kw})


@pytest.mark.slow
def test_smollm2_cot_greedy_equals_generate_and_selar_equals_selar_generate(smollm2):
    prompts = same_layout(smollm2, raw=False)
    ids, mask, _ = left_padded(smollm2, prompts, raw=False)  # chat template, left padding
    ref = smollm2.hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=40, do_sample=False)
    got = custom(smollm2, ids, mask, method="cot", max_new_tokens=40)
    assert torch.equal(got, ref)

    opts = dict(tau=0.5, seed=3, max_new_tokens=32)
    got = custom(smollm2, ids, mask, method="selar", do_sample=True, temperature=0.6, top_p=0.95, top_k=20,
                 return_dict_in_generate=True, **opts)  # fmt: skip
    # custom_generate wraps the model with the default compile policy: compiled if this model's step
    # was compiled already (an earlier test may have), so selar's side is wrapped alike: one engine
    same = selar.wrap(smollm2.hf_model, smollm2.tokenizer)
    sel = selar.generate(same, prompts, "selar", temperature=0.6, top_p=0.95, top_k=20, **opts)
    assert got.sequences[:, ids.shape[1] :].tolist() == padded(sel, smollm2.pad_id)
    assert got.num_soft_steps.tolist() == [r.num_soft_steps for r in sel]
    assert got.finish_reasons == [r.finish_reason for r in sel]
    assert sum(got.num_soft_steps.tolist()) > 0  # soft inputs were fed through model.generate


def test_force_answer_at_through_generate_equals_selar_generate_tiny(tiny):
    """selar's forced answer (force_answer_at) reaches the decode loop through model.generate."""
    prompts = same_layout(tiny)
    ids, mask, _ = left_padded(tiny, prompts)
    opts = dict(tau=0.5, seed=3, max_new_tokens=40, force_answer_at=8, forced_answer_tokens=4)
    got = custom(tiny, ids, mask, method="selar", do_sample=True, temperature=0.6, top_p=0.95, top_k=20,
                 return_dict_in_generate=True, **opts)  # fmt: skip
    ref = selar.generate(tiny, prompts, "selar", raw=True, temperature=0.6, top_p=0.95, top_k=20, **opts)
    assert all(r.forced_at == 8 for r in ref)  # every row was forced at its budget
    assert got.sequences[:, ids.shape[1] :].tolist() == padded(ref, tiny.pad_id)
    forced = tiny.tokenizer.encode("\n\nThe final answer is", add_special_tokens=False)
    assert all(r.token_ids[8 : 8 + len(forced)] == forced for r in ref)
