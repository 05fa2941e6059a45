"""Decode speed: transformers `model.generate` (greedy) vs selar `cot` vs selar `selar`, on the
same model and dtype, at several batch sizes. Prints tokens/s and the ratios measured in this run.

    python benchmarks/decode_speed.py --model qwen2.5-coder-0.5b --batch-sizes 1,8 --new-tokens 128

Every run generates exactly --new-tokens tokens per row (stop tokens are disabled for all three),
so the three do the same amount of model work; each figure is the best of --repeats interleaved rounds.
"""

from __future__ import annotations

import argparse
import time

import torch

import selar

PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
    "Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. "
    "How much more money does Betty need to buy the wallet?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
    "What is 17 * 23?",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?",
    "Julie is reading a 120-page book. Yesterday, she was able to read 12 pages and today, she read twice as "
    "many pages as yesterday. If she wants to read half of the remaining pages tomorrow, how many pages should she read?",
    "Albert is wondering how much pizza he can eat in one day. He buys 2 large pizzas and 2 small pizzas. "
    "A large pizza has 16 slices and a small pizza has 8 slices. How many pieces does he eat that day?",
]


def interleaved(fns, repeats: int) -> list[float]:
    """Best time of each function over `repeats` rounds; every round runs all of them, in a
    rotated order, so slow phases of a noisy machine hit all of them alike."""
    best = [float("inf")] * len(fns)
    for r in range(repeats):
        for j in [(r + i) % len(fns) for i in range(len(fns))]:
            t0 = time.perf_counter()
            fns[j]()
            best[j] = min(best[j], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = selar.load_model(args.model, dtype=args.dtype)
    hf, n = model.hf_model, args.new_tokens
    print(f"model {args.model}, dtype {model.dtype}, device {model.device}, threads {torch.get_num_threads()}, "
          f"{n} new tokens per row, best of {args.repeats}")
    model.stop_ids = []  # same work for all: no early stop
    hf.generation_config.eos_token_id = None

    rows = []
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        prompts = (PROMPTS * ((b + len(PROMPTS) - 1) // len(PROMPTS)))[:b]
        enc = [selar.format_prompt(model, p) for p in prompts]
        width = max(map(len, enc))
        ids = torch.tensor([[model.pad_id] * (width - len(e)) + e for e in enc])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])

        def hf_run():
            out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                              min_new_tokens=0, pad_token_id=model.pad_id, top_k=None, top_p=None, temperature=None)
            assert out.shape[1] - width == n

        soft = {}

        def ours(method):
            def run():
                res = selar.generate(model, prompts, method, prompt_token_ids=enc, temperature=0,
                                     max_new_tokens=n, batch_size=b)
                assert all(r.num_tokens == n for r in res)
                soft[method] = sum(r.num_soft_steps for r in res) / (n * b)
            return run

        with torch.inference_mode():
            ours("selar")()  # warm-up (and the symbol table, built once per tokenizer)
            t_hf, t_cot, t_sel = interleaved([hf_run, ours("cot"), ours("selar")], args.repeats)
        tps = [b * n / t for t in (t_hf, t_cot, t_sel)]
        rows.append((b, *tps, soft["selar"]))

    print(f"{'batch':>5} {'generate tok/s':>15} {'cot tok/s':>10} {'selar tok/s':>12} {'cot/generate':>13} "
          f"{'selar/cot':>10} {'selar soft steps':>17}")
    for b, g, c, s, soft in rows:
        print(f"{b:>5} {g:>15.1f} {c:>10.1f} {s:>12.1f} {c / g:>13.3f} {s / c:>10.3f} {soft:>17.1%}")


if __name__ == "__main__":
    main()
