"""selar.train: hidden-state feedback, the stop head, the length penalty and GRPO advantages,
SFT batches, save/load. Tiny random models; every expectation is computed independently."""

from __future__ import annotations

import statistics

import pytest
import torch

pytest.importorskip("peft")

from conftest import make_model, make_tokenizer  # noqa: E402

from selar.train.data import Example, is_correct, load_jsonl, parse_answer, save_jsonl, synthetic_arithmetic  # noqa: E402
from selar.train.model import CONTINUE, STOP, LatentReasoner  # noqa: E402
from selar.train.rl import action_logprobs, group_rewards, grpo_advantages, grpo_loss, relative_length_rewards  # noqa: E402
from selar.train.sft import (  # noqa: E402
    Item,
    SFTConfig,
    _stage_plan,
    budget_item,
    build_batch,
    latent_budget,
    sft_loss,
    stage_item,
    train_sft,
)


def reasoner(lora=False, projection="linear", seed=0, base="", max_latent=6):
    tok = make_tokenizer()
    m = make_model(tok, seed=seed)
    r = LatentReasoner.from_base(
        m, tok, lora=lora, projection=projection, max_latent=max_latent, seed=seed, base=base, lora_r=4
    )
    torch.manual_seed(seed + 1)
    with torch.no_grad():  # move every trainable part away from its (identity / zero) initialisation
        for name, p in r.named_parameters():
            if "lora_B" in name or name.startswith("heads.proj"):
                p.add_(0.05 * torch.randn_like(p))
    return r.eval()


def manual_logits(r: LatentReasoner, ids: list[int], latent: list[bool]) -> torch.Tensor:
    """One row, no padding, no cache: position t's input is project(h_{t-1}) when latent[t],
    h_{t-1} taken from a full forward pass over the inputs before t."""
    embeds = []
    for t, (i, lat) in enumerate(zip(ids, latent)):
        if lat:
            out = r.lm(inputs_embeds=torch.stack(embeds)[None], output_hidden_states=True)
            embeds.append(r.heads.project(out.hidden_states[-1][0, -1]))
        else:
            embeds.append(r.embed(torch.tensor([i]))[0])
    return r.lm(inputs_embeds=torch.stack(embeds)[None]).logits[0]


@pytest.mark.parametrize("lora,projection", [(False, "linear"), (True, "mlp"), (False, "none")])
def test_hidden_state_feedback_equals_manual_loop(lora, projection):
    r = reasoner(lora=lora, projection=projection)
    tok = r.tokenizer
    items = [
        Item(tok.encode("Natalia sold clips"), 3, tok.encode(" The answer is: 72") + [tok.eos_token_id]),
        Item(tok.encode("How many"), 1, tok.encode(" 48 / 2 = 24") + [tok.eos_token_id]),
        Item(tok.encode("Weng earns $12 an hour for babysitting."), 0, [tok.eos_token_id]),
    ]
    b = build_batch(r, items)
    with torch.no_grad():
        logits, _ = r.forward_latent(b["input_ids"], b["attention_mask"], b["latent_mask"])
        for row in range(len(items)):
            keep = b["attention_mask"][row].bool()
            ids = b["input_ids"][row][keep].tolist()
            lat = b["latent_mask"][row][keep].tolist()
            assert sum(lat) == items[row].latent
            want = manual_logits(r, ids, lat)
            torch.testing.assert_close(logits[row][keep], want, atol=2e-4, rtol=1e-4)


def test_gradient_flows_through_the_latent_chain():
    r = reasoner()
    tok = r.tokenizer
    b = build_batch(r, [Item(tok.encode("How many"), 3, tok.encode(" 72") + [tok.eos_token_id])])
    logits, _ = r.forward_latent(b["input_ids"], b["attention_mask"], b["latent_mask"])
    logits[0, -1].sum().backward()
    assert r.heads.proj.weight.grad is not None and r.heads.proj.weight.grad.abs().sum() > 0


def test_build_batch_labels():
    r = reasoner()
    tok, h = r.tokenizer, r.heads
    it = Item([5, 6], 2, [7, 8, tok.eos_token_id])
    b = build_batch(r, [it, Item([5], 0, [tok.eos_token_id], supervise_stop=False)])
    ids = b["input_ids"][0].tolist()
    assert ids == [5, 6, h.bot_id, h.lat_id, h.lat_id, h.eot_id, 7, 8, tok.eos_token_id]
    assert b["latent_mask"][0].tolist() == [i == h.lat_id for i in ids]
    # decisions: CONTINUE at <bot> and the first <lat>, STOP at the last <lat>
    assert b["stop_labels"][0].tolist()[:5] == [-100, -100, CONTINUE, CONTINUE, STOP]
    assert (b["stop_labels"][1] == -100).all()
    # position t predicts token t+1, only after <eot>
    assert b["lm_labels"][0].tolist() == [-100] * 5 + [7, 8, tok.eos_token_id, -100]


def test_stage_items_follow_the_curriculum():
    tok = make_tokenizer()
    ex = Example("1 + 2 =", ["1 + 2 = 3", "3 * 2 = 6"], "6")
    s0, s1, s2, s3 = (stage_item(tok, ex, s, latents_per_step=2) for s in range(4))
    assert (s0.latent, s1.latent, s2.latent, s3.latent) == (0, 2, 4, 4)
    assert tok.decode(s1.suffix, skip_special_tokens=True) == "3 * 2 = 6 The answer is: 6"
    assert tok.decode(s2.suffix, skip_special_tokens=True) == "The answer is: 6"
    assert not s1.supervise_stop and s2.supervise_stop and s3.supervise_stop


def test_stop_head_stops():
    r = reasoner(max_latent=5)
    prompts = [r.tokenizer.encode("How many"), r.tokenizer.encode("Natalia sold clips")]
    with torch.no_grad():
        r.heads.stop_head.weight.zero_()
        r.heads.stop_head.bias.copy_(torch.tensor([0.0, 5.0]))  # p(STOP) ~ 1
    rows = r.generate(prompts, max_answer_tokens=3)
    assert [x["latent_steps"] for x in rows] == [0, 0]
    assert all(x["decisions"] == [True] and not x["forced_stop"] for x in rows)
    with torch.no_grad():
        r.heads.stop_head.bias.copy_(torch.tensor([5.0, 0.0]))  # p(STOP) ~ 0: the limit stops it
    rows = r.generate(prompts, max_answer_tokens=3)
    assert [x["latent_steps"] for x in rows] == [5, 5]
    assert all(x["decisions"] == [False] * 5 and x["forced_stop"] for x in rows)
    # a head that reads the hidden state: the decisions are its own argmax at each step
    torch.manual_seed(3)
    with torch.no_grad():
        r.heads.stop_head.weight.copy_(torch.randn_like(r.heads.stop_head.weight))
        r.heads.stop_head.bias.zero_()
    rows = r.generate(prompts, max_answer_tokens=3, max_latent=20)
    for p, x in zip(prompts, rows):
        k = x["latent_steps"]
        b = build_batch(r, [Item(p, k, [])])
        with torch.no_grad():
            _, hid = r.forward_latent(b["input_ids"], b["attention_mask"], b["latent_mask"])
        decided = (r.heads.stop_prob(hid[0, -2 - k : -1]) >= 0.5).tolist()  # at <bot> and each <lat>
        assert decided[-1] or k == 20
        assert not any(decided[:-1])


def test_relative_length_penalty_on_hand_made_groups():
    # correct lengths 2, 4, 3: mean 3, range 2
    got = relative_length_rewards([2, 4, 6, 3], [True, True, False, True], penalty=0.5)
    assert got == pytest.approx([-0.5 * (2 - 3) / 2, -0.5 * (4 - 3) / 2, 0.0, -0.5 * (3 - 3) / 2])
    # all correct lengths equal: no penalty; nobody correct: none
    assert relative_length_rewards([3, 3, 5], [True, True, False], 1.0) == [0.0, 0.0, 0.0]
    assert relative_length_rewards([1, 2], [False, False], 1.0) == [0.0, 0.0]
    # accuracy requirement 1.0 (the whole group): 3 of 4 correct -> no penalty ...
    assert relative_length_rewards([2, 4, 6, 3], [True, True, False, True], 0.5, accuracy_requirement=1.0) == [0.0] * 4
    # ... unless a reward below the requirement is set: longer correct answers are then rewarded
    got = relative_length_rewards(
        [2, 4, 6, 3], [True, True, False, True], 0.5, accuracy_requirement=1.0, reward_below=0.1
    )
    assert got == pytest.approx([0.1 * (2 - 3) / 2, 0.1 * (4 - 3) / 2, 0.0, 0.0])
    # a count requirement (> 1): 3 correct >= 3
    got = relative_length_rewards([2, 4, 6, 3], [True, True, False, True], 0.5, accuracy_requirement=3)
    assert got == pytest.approx([0.25, -0.25, 0.0, 0.0])
    # full rewards: format penalty, answer reward, length term
    got = group_rewards([1, 5, 2, 3], [True, True, False, False], [True, True, True, False], length_penalty=1.0)
    assert got == pytest.approx([1 + 0.5, 1 - 0.5, 0.0, -1.0])


def test_grpo_advantages_on_hand_made_groups():
    rewards = [1.0, 0.0, 0.5, 1.5, 2.0, 2.0, 2.0, 2.0]
    adv = grpo_advantages(torch.tensor(rewards), 4, eps=1e-4).tolist()
    for g in range(2):
        grp = rewards[4 * g : 4 * g + 4]
        m, s = statistics.mean(grp), statistics.stdev(grp)
        assert adv[4 * g : 4 * g + 4] == pytest.approx([(x - m) / (s + 1e-4) for x in grp], abs=1e-6)
    assert adv[4:] == [0.0] * 4  # a group with equal rewards teaches nothing
    unscaled = grpo_advantages(torch.tensor(rewards), 4, scale=False).tolist()
    assert unscaled[:4] == pytest.approx([x - statistics.mean(rewards[:4]) for x in rewards[:4]])


def test_grpo_loss_and_its_gradient():
    lp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.1, -3.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    adv = torch.tensor([2.0, -1.0])
    loss = grpo_loss(lp, mask, adv)
    # ratio = 1 on the policy's own samples: loss = -mean_i A_i; d loss / d lp_it = -A_i / (|o_i| N)
    assert float(loss) == pytest.approx(-(2.0 - 1.0) / 2)
    loss.backward()
    want = torch.tensor([[-2.0 / 2 / 2, -2.0 / 2 / 2, 0.0], [1.0 / 3 / 2] * 3])
    torch.testing.assert_close(lp.grad, want)
    # the k3 KL term is zero when the reference equals the policy, positive otherwise
    same = grpo_loss(lp.detach(), mask, torch.zeros(2), ref_lp=lp.detach(), beta=0.5)
    assert float(same) == pytest.approx(0.0)
    assert float(grpo_loss(lp.detach(), mask, torch.zeros(2), ref_lp=lp.detach() - 1, beta=0.5)) > 0


def test_action_logprobs_are_the_sampling_probabilities():
    r = reasoner(max_latent=4)
    tok = r.tokenizer
    p = tok.encode("How many")
    g = torch.Generator().manual_seed(0)
    row = r.generate([p], greedy=False, generator=g, max_answer_tokens=3, temperature=0.7, stop_temperature=2.0)[0]
    from selar.train.rl import rollout_items

    b = build_batch(r, rollout_items(r, [p], [row]))
    with torch.no_grad():
        lp, mask = action_logprobs(r, b, temperature=0.7, stop_temperature=2.0)
        logits, hid = r.forward_latent(b["input_ids"], b["attention_mask"], b["latent_mask"])
    k = row["latent_steps"]
    P = len(p) + 1 + k
    want = []
    for j, stopped in enumerate(row["decisions"]):  # decisions at <bot> (P-1-k) ... <lat> (P-1)
        probs = torch.softmax(r.heads.stop_logits(hid[0, P - 1 - k + j]) / 2.0, -1)
        want.append(torch.log(probs[STOP if stopped else CONTINUE]))
    for j, t in enumerate(row["answer_ids"]):  # the token after <eot> at P is predicted at P + j
        want.append(torch.log_softmax(logits[0, P + j] / 0.7, -1)[t])
    assert int(mask.sum()) == len(want)
    torch.testing.assert_close(lp[mask], torch.stack(want), atol=1e-5, rtol=1e-5)


def test_sft_learns_a_batch():
    tok = make_tokenizer()
    r = LatentReasoner.from_base(make_model(tok), tok, lora=False, max_latent=4)
    ex = [Example("1 + 2 =", ["1 + 2 = 3"], "3"), Example("2 * 3 =", ["2 * 3 = 6", "6 / 2 = 3"], "3")]
    b = build_batch(r, [stage_item(tok, e, 2) for e in ex])
    before = float(sft_loss(r, b)[0])
    train_sft(
        r, ex, SFTConfig(stages=2, cot_steps=0, steps_per_stage=15, lr=3e-3, warmup=1, batch_size=2), log=lambda s: None
    )
    assert float(sft_loss(r, b)[0]) < 0.5 * before


@pytest.mark.parametrize("lora", [False, True])
def test_save_load_round_trip(tmp_path, lora):
    base_dir = tmp_path / "base"
    tok = make_tokenizer()
    make_model(tok).save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    r = reasoner(lora=lora, projection="mlp", base=str(base_dir) if lora else "")
    with torch.no_grad():
        r.heads.stop_head.bias.add_(torch.tensor([0.0, 0.3]))
        r.lm.get_input_embeddings()  # the new tokens' rows are saved with the adapter
    r.save(tmp_path / "adapter")
    if lora:
        assert (tmp_path / "adapter" / "adapter_config.json").is_file()
        assert not (tmp_path / "adapter" / "base").exists()
    r2 = LatentReasoner.load(tmp_path / "adapter")
    items = [Item(tok.encode("How many"), 2, tok.encode(" 72") + [tok.eos_token_id])]
    b = build_batch(r, items)
    with torch.no_grad():
        l1, h1 = r.forward_latent(b["input_ids"], b["attention_mask"], b["latent_mask"])
        l2, h2 = r2.forward_latent(b["input_ids"], b["attention_mask"], b["latent_mask"])
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(r.heads.stop_logits(h1), r2.heads.stop_logits(h2))
    prompts = [tok.encode("Natalia sold clips"), tok.encode("How many")]
    assert r.generate(prompts, max_answer_tokens=4) == r2.generate(prompts, max_answer_tokens=4)


def test_synthetic_arithmetic_is_consistent():
    ex = synthetic_arithmetic(200, min_steps=1, max_steps=4, modulus=10, seed=3)
    assert {len(e.steps) for e in ex} == {1, 2, 3, 4}
    for e in ex:
        words = e.question.rstrip(" =").split()
        v = int(words[0])
        for j, (op, b) in enumerate(zip(words[1::2], words[2::2])):
            w = eval(f"({v} {op} {b}) % 10")
            assert e.steps[j] == f"{v} {op} {b} = {w}"
            v = w
        assert e.answer == str(v)
    assert synthetic_arithmetic(5, seed=1) == synthetic_arithmetic(5, seed=1)


def test_aligned_layout_puts_operation_j_at_a_fixed_place():
    aligned = synthetic_arithmetic(300, max_steps=4, seed=7, layout="aligned")
    assert {len(e.steps) for e in aligned} == {1, 2, 3, 4}
    for e in aligned:
        words = e.question.split()
        assert len(words) == 1 + 4 + 1 and words[-1] == "="  # value, 4 operation slots, "="
        k = len(e.steps)
        assert words[1 + k : 5] == ["."] * (4 - k)  # operation j in slot j, "." in the empty slots
        v = int(words[0])
        for j, w in enumerate(words[1 : 1 + k]):
            op, b = w[0], int(w[1:])
            assert op in "+-*" and 1 <= b <= 9 and (op != "*" or b in (3, 7, 9))  # bijections mod 10, not *1
            new = eval(f"({v} {op} {b}) % 10")
            assert e.steps[j] == f"{v} {w} = {new}"
            v = new
        assert e.answer == str(v)


def test_jsonl_round_trip_and_answers(tmp_path):
    ex = synthetic_arithmetic(10, seed=0)
    save_jsonl(ex, tmp_path / "d.jsonl")
    assert load_jsonl(tmp_path / "d.jsonl") == ex
    (tmp_path / "cot.jsonl").write_text('{"q": "2+2?", "cot": "2+2=4\\nso 4", "a": "4"}\n')
    got = load_jsonl(tmp_path / "cot.jsonl", fields={"question": "q", "steps": "cot", "answer": "a"})
    assert got == [Example("2+2?", ["2+2=4", "so 4"], "4")]
    assert parse_answer("The answer is: 42") == "42" and parse_answer("The answer is : 7") == "7"
    assert parse_answer("42") is None and parse_answer("The answer is: 4 2") is None
    assert is_correct("42", "42") and is_correct("1,000", "1000") and not is_correct(None, "1")


def test_gsm8k_aug_offline_is_a_clear_error(monkeypatch):
    import selar
    from selar.train import data

    try:
        import datasets
    except ImportError:
        with pytest.raises(selar.ConfigError, match="selar\\[hub\\]"):
            data.load_gsm8k_aug()
        return

    def boom(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(selar.OfflineError, match="cannot reach"):
        data.load_gsm8k_aug()
    assert data.gsm8k_aug_steps("<<600*30/100=180>> <<600*10/100=60>>") == ["600*30/100=180", "600*10/100=60"]


def test_codi_loss_on_hand_made_tensors():
    from selar.train.sft import codi_loss

    # 2 rows, 2 layers, 2 features; smooth L1 (beta 1): 0.5 d^2 if |d| < 1 else |d| - 0.5
    teacher = torch.tensor([[[1.0, 3.0], [0.0, 0.0]], [[3.0, 1.0], [4.0, 0.0]]])
    student = torch.tensor([[[1.5, 3.0], [2.0, 0.0]], [[3.0, 1.0], [4.0, -0.5]]], requires_grad=True)
    # layer 0: diffs 0.5, 0, 0, 0 -> losses 0.125, 0, 0, 0 -> mean 0.03125; teacher values 1, 3, 3, 1 -> std
    # (Bessel) sqrt(4/3); layer 1: diffs 2, 0, 0, 0.5 -> 1.5, 0, 0, 0.125 -> mean 0.40625; teacher 0, 0, 4, 0 -> std 2
    want = (0.03125 / (4 / 3) ** 0.5 + 0.40625 / 2.0) / 2
    got = codi_loss(student, teacher)
    assert float(got) == pytest.approx(want, rel=1e-6)
    t = teacher.clone().requires_grad_(True)
    codi_loss(student, t).backward()  # the teacher is a target: no gradient reaches it even when it requires one
    assert t.grad is None
    # d/ds of 0.5 d^2 is d: row 0, layer 0, feature 0 has d = 0.5, averaged over 4 and scaled by 1 / (std * 2 layers)
    assert float(student.grad[0, 0, 0]) == pytest.approx(0.5 / 4 / (4 / 3) ** 0.5 / 2, rel=1e-6)
    assert float(codi_loss(teacher, teacher)) == 0.0


def test_budgeted_stop_labels():
    tok = make_tokenizer()
    r = LatentReasoner.from_base(make_model(tok), tok, lora=False, max_latent=6)
    h = r.heads
    exs = [
        Example("1 + 2 =", ["1 + 2 = 3"], "3"),
        Example("2 * 3 =", ["2 * 3 = 6", "6 / 2 = 3"], "3"),
        Example("4 - 1 =", ["a", "b", "c", "d", "e"], "3"),
    ]
    items = [budget_item(tok, e, latent_budget(len(e.steps), 3, 1, max_latent=6)) for e in exs]
    assert [it.latent for it in items] == [4, 5, 6]  # 3 + 1 x steps, capped at max_latent
    assert [latent_budget(len(e.steps), 6) for e in exs] == [6, 6, 6]  # a fixed budget
    coconut = [stage_item(tok, e, 5, latents_per_step=2).latent for e in exs]
    assert coconut == [2, 4, 10]  # no budget: exactly the need (c per step)
    b = build_batch(r, items)
    for row, it in enumerate(items):
        ids, labels = b["input_ids"][row].tolist(), b["stop_labels"][row].tolist()
        bot = ids.index(h.bot_id)
        eot = ids.index(h.eot_id)
        assert eot - bot - 1 == it.latent
        # a decision at <bot> and at every <lat>: CONTINUE for each latent step, STOP at the last one
        want = [-100] * bot + [CONTINUE] * it.latent + [STOP] + [-100] * (len(ids) - eot)
        assert labels == want
        # the answer position predicts the answer's first token, right after "The answer is:"
        pos = int(b["answer_pos"][row])
        assert b["lm_labels"][row, pos] == tok.encode(" 3", add_special_tokens=False)[0]
        assert tok.decode(ids[eot + 1 : pos + 1]).strip().endswith("The answer is:")
    # latent thoughts: thought j (the state fed to latent step j+1, read at <bot> + j - 1) decodes to step j's
    # result, and the slack after the last step holds the final result
    th = budget_item(tok, exs[1], 5, thoughts=True)
    digit = lambda d: tok.encode(" " + d, add_special_tokens=False)[0]  # noqa: E731
    assert th.thoughts == [digit("6"), digit("3"), digit("3"), digit("3"), digit("3")]
    tb = build_batch(r, [th])
    bot = tb["input_ids"][0].tolist().index(h.bot_id)
    labels = tb["thought_labels"][0].tolist()
    assert labels == [-100] * bot + th.thoughts + [-100] * (len(labels) - bot - 5)
    assert stage_item(tok, exs[1], 1, thoughts=True).thoughts == [digit("6")]
    # the curriculum before a budget stage does not train the stop head (it would teach stopping at the need)
    assert (
        stage_item(tok, exs[1], 2).supervise_stop
        and not stage_item(tok, exs[1], 2, supervise_stop=False).supervise_stop
    )
    assert not stage_item(tok, exs[1], 1).supervise_stop
    assert (build_batch(r, [stage_item(tok, exs[1], 2, supervise_stop=False)])["stop_labels"] == -100).all()
    cfg = SFTConfig(budget_base=3, budget_per_step=1, steps_per_stage=7, budget_steps=9, cot_steps=5)
    plan = _stage_plan(cfg, r, exs)
    assert [(name, n) for name, n, _ in plan] == [
        ("0", 5),
        ("1", 7),
        ("2", 7),
        ("3", 7),
        ("4", 7),
        ("5", 7),
        ("budget", 9),
    ]
    assert [it.latent for it in plan[-1][2]] == [4, 5, 6]
    assert not any(it.supervise_stop for _, _, items in plan[:-1] for it in items)
    plan = _stage_plan(SFTConfig(curriculum="none", budget_base=6, cot_steps=5), r, exs)
    assert [(name, [it.latent for it in items]) for name, _, items in plan][1:] == [("budget", [6, 6, 6])]


def test_codi_sft_loss_and_training():
    tok = make_tokenizer()
    r = LatentReasoner.from_base(make_model(tok), tok, lora=False, max_latent=4)
    ex = [Example("1 + 2 =", ["1 + 2 = 3"], "3"), Example("2 * 3 =", ["2 * 3 = 6", "6 / 2 = 3"], "3")]
    student = build_batch(r, [budget_item(tok, e, latent_budget(len(e.steps), 1, 1)) for e in ex])
    teacher = build_batch(r, [stage_item(tok, e, 0) for e in ex])
    loss, parts = sft_loss(r, student, teacher=teacher, distill_weight=2.0)
    plain, plain_parts = sft_loss(r, student)
    assert parts["lm"] == pytest.approx(plain_parts["lm"]) and parts["distill"] > 0
    # the distillation term is codi_loss of every layer's state at the two answer positions
    from selar.train.sft import codi_loss

    with torch.no_grad():
        _, hs = r.forward_latent(
            student["input_ids"], student["attention_mask"], student["latent_mask"], all_layers=True
        )
        _, ht = r.forward_latent(
            teacher["input_ids"], teacher["attention_mask"], teacher["latent_mask"], all_layers=True
        )
    rows = torch.arange(2)
    assert hs.shape[2] == r.lm.config.num_hidden_layers
    want = codi_loss(hs[rows, student["answer_pos"]], ht[rows, teacher["answer_pos"]])
    assert parts["distill"] == pytest.approx(float(want), rel=1e-5)
    assert float(loss) == pytest.approx(float(plain) + parts["teacher_lm"] + 2.0 * parts["distill"], rel=1e-5)
    # the last layer of all_layers is the state fed back (and read by the stop head)
    _, last = r.forward_latent(student["input_ids"], student["attention_mask"], student["latent_mask"])
    torch.testing.assert_close(hs[:, :, -1], last.detach())
    hist = train_sft(
        r,
        ex,
        SFTConfig(
            stages=2,
            cot_steps=2,
            steps_per_stage=10,
            lr=3e-3,
            warmup=1,
            batch_size=2,
            budget_base=1,
            budget_per_step=1,
            distill="codi",
            log_every=5,
        ),
        log=lambda s: None,
    )
    assert hist[-1]["distill_loss"] < hist[1]["distill_loss"] and "teacher_lm_loss" in hist[-1]


def test_split_data_is_one_split_for_every_command(tmp_path):
    from selar.train.data import split_data

    exs = synthetic_arithmetic(40, seed=5)
    save_jsonl(exs, tmp_path / "d.jsonl")
    held_eval = split_data(str(tmp_path / "d.jsonl"), 0, 12)[1]
    train, held = split_data(str(tmp_path / "d.jsonl"), 20, 12)
    assert held_eval == held == exs[:12]
    assert train == [e for e in exs[12:32] if e.question not in {h.question for h in held}]
    tr_s, held_s = split_data("synthetic", 50, 30, seed=2)
    assert split_data("synthetic", 0, 30, seed=2)[1] == held_s and len(held_s) == 30
    assert not {e.question for e in tr_s} & {e.question for e in held_s}
    with pytest.raises(selar_config_error()):
        split_data(str(tmp_path / "d.jsonl"), 10, 40)


def selar_config_error():
    from selar.errors import ConfigError

    return ConfigError


def test_thought_loss_reads_each_fed_back_state_with_the_lm_head():
    tok = make_tokenizer()
    r = LatentReasoner.from_base(make_model(tok), tok, lora=False, max_latent=5)
    ex = [Example("1 + 2 =", ["1 + 2 = 3"], "3"), Example("2 * 3 =", ["2 * 3 = 6", "6 / 2 = 3"], "3")]
    items = [budget_item(tok, e, 3, thoughts=True) for e in ex]
    b = build_batch(r, items)
    _, parts = sft_loss(r, b, thought_weight=0.5)
    with torch.no_grad():
        logits, _ = r.forward_latent(b["input_ids"], b["attention_mask"], b["latent_mask"])
    want = []
    for row, it in enumerate(items):
        bot = b["input_ids"][row].tolist().index(r.heads.bot_id)
        for j, t in enumerate(it.thoughts):  # the state at <bot> + j is fed to latent step j + 1
            want.append(-torch.log_softmax(logits[row, bot + j], -1)[t])
    assert parts["thought"] == pytest.approx(float(torch.stack(want).mean()), rel=1e-5)
    assert "thought" not in sft_loss(r, b)[1]  # weight 0: no such term


def test_need_to_budget_rows_are_cut_between_the_need_and_the_budget():
    tok = make_tokenizer()
    r = LatentReasoner.from_base(make_model(tok), tok, lora=False, max_latent=8)
    exs = [Example(f"{i} + 1 =", [f"s{j}" for j in range(1 + i % 3)], "3") for i in range(60)]
    cfg = SFTConfig(budget_base=3, budget_per_step=1, cot_steps=1, steps_per_stage=1, budget_lengths="need-to-budget")
    items = _stage_plan(cfg, r, exs)[-1][2]
    budgets = [latent_budget(len(e.steps), 3, 1, max_latent=8) for e in exs]
    assert all(len(e.steps) <= it.latent <= b for e, it, b in zip(exs, items, budgets))
    assert len({it.latent - len(e.steps) for e, it in zip(exs, items)}) == 4  # cut anywhere: need + 0..3
    b = build_batch(r, items)
    h = r.heads
    for row, (it, budget) in enumerate(zip(items, budgets)):
        ids, labels = b["input_ids"][row].tolist(), b["stop_labels"][row].tolist()
        bot = ids.index(h.bot_id)
        decisions = labels[bot : bot + it.latent + 1]  # at <bot> and at every <lat>
        if it.latent == budget:  # at the budget: continue, then stop
            assert decisions == [CONTINUE] * it.latent + [STOP]
        else:  # cut early: never taught to stop there (the last decision is not trained)
            assert decisions == [CONTINUE] * it.latent + [-100]
        assert b["lm_labels"][row, int(b["answer_pos"][row])] == tok.encode(" 3", add_special_tokens=False)[0]
    with pytest.raises(Exception, match="budget_lengths"):
        SFTConfig(budget_lengths="sometimes")


def test_training_loops_report_every_step_to_a_progress_callback():
    tok = make_tokenizer()
    r = LatentReasoner.from_base(make_model(tok), tok, lora=False, max_latent=4)
    ex = [Example("1 + 2 =", ["1 + 2 = 3"], "3"), Example("2 * 3 =", ["2 * 3 = 6", "6 / 2 = 3"], "3")]
    ticks = []
    cfg = SFTConfig(stages=2, cot_steps=2, steps_per_stage=3, budget_base=1, budget_steps=2, batch_size=2)
    train_sft(r, ex, cfg, log=lambda s: None, tick=lambda *a: ticks.append(a))
    assert [(p, s, t) for p, s, t, _ in ticks] == [("sft", s, 10) for s in range(1, 11)]  # 2 + 2 x 3 + 2 steps
    assert ticks[-1][3].startswith("stage budget lm ")
