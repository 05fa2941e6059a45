"""Decode speed, all measured in one run on the same model and dtype, at several batch sizes:

- `generate`: transformers' `model.generate` (greedy, its dynamic cache, eager);
- `generate static+compile`: the same with `cache_implementation="static"` and its compiled forward;
- `cot eager`: selar's `cot` on the eager engine (compile="off");
- `cot`, `selar`: selar's compiled static-cache engine (compile="on").

    python benchmarks/decode_speed.py --model qwen2.5-coder-0.5b --batch-sizes 1,8 --new-tokens 128

Every row generates exactly --new-tokens tokens (stop ids off: `ignore_eos` for selar, no eos for
transformers), so all do the same model work. Figures are the median of --repeats interleaved
rounds (each round runs all of them in a rotated order, so slow phases of a shared machine hit all
alike); compilation is done in a warm-up round and reported apart. The bandwidth floor is the
decode rate a batch-1 step would reach if it only read the weights once at the read bandwidth this
run measures (`torch.sum` over a buffer larger than the caches); `decode tok/s` excludes the prefill
(a run of 1 new token is subtracted).
"""

from __future__ import annotations

import argparse
import os
import statistics
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
    "many pages as yesterday. If she wants to read half of the remaining pages tomorrow, how many pages "
    "should she read?",
    "Albert is wondering how much pizza he can eat in one day. He buys 2 large pizzas and 2 small pizzas. "
    "A large pizza has 16 slices and a small pizza has 8 slices. How many pieces does he eat that day?",
]
NAMES = ["generate", "generate static+compile", "cot eager", "cot", "selar"]


def interleaved(fns, repeats: int) -> list[list[float]]:
    """Times of each function over `repeats` rounds, every round running all of them in a rotated order."""
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        for j in [(r + i) % len(fns) for i in range(len(fns))]:
            t0 = time.perf_counter()
            fns[j]()
            times[j].append(time.perf_counter() - t0)
    return times


def read_bandwidth(mib: int = 1024, repeats: int = 7) -> float:
    """Bytes per second `torch.sum` reads from a float32 buffer of `mib` MiB (best of `repeats`)."""
    x = torch.ones(mib * 2**20 // 4)
    x.sum()
    best = min(_timed(x.sum) for _ in range(repeats))
    return x.numel() * 4 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def weight_bytes(hf) -> int:
    """Bytes a decode step reads of the weights: every parameter once, except the input embedding
    table when it is not also the output head (a step reads one row of it)."""
    seen, total = set(), 0
    emb, head = hf.get_input_embeddings().weight, hf.get_output_embeddings().weight
    for p in hf.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
    if emb.data_ptr() != head.data_ptr():
        total -= emb.numel() * emb.element_size()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--skip-hf-compile", action="store_true", help="leave out generate static+compile")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import CompileConfig

    loaded = selar.load_model(args.model, dtype=args.dtype)
    hf, tok, n = loaded.hf_model, loaded.tokenizer, args.new_tokens
    on = selar.wrap(hf, tok, name=args.model, compile="on")
    off = selar.wrap(hf, tok, name=args.model, compile="off")
    hf.generation_config.eos_token_id = None
    bw = read_bandwidth()
    wbytes = weight_bytes(hf)
    load = os.getloadavg()
    print(
        f"model {args.model}, dtype {loaded.dtype}, device {loaded.device}, threads {torch.get_num_threads()}, "
        f"{n} new tokens per row, median of {args.repeats}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"read bandwidth {bw / 1e9:.1f} GB/s, weights read per step {wbytes / 1e6:.0f} MB: "
        f"bandwidth floor {bw / wbytes:.1f} tok/s at batch 1"
    )
    compile_cfg = CompileConfig(fullgraph=True, dynamic=False)
    compile_cfg._compile_all_devices = True  # transformers compiles on CUDA only unless asked

    rows, compile_times = [], {}
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        prompts = (PROMPTS * ((b + len(PROMPTS) - 1) // len(PROMPTS)))[:b]
        enc = [selar.format_prompt(loaded, p) for p in prompts]
        width = max(map(len, enc))
        ids = torch.tensor([[loaded.pad_id] * (width - len(e)) + e for e in enc])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
        hf_kw = dict(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            min_new_tokens=0,
            pad_token_id=loaded.pad_id,
            top_k=None,
            top_p=None,
            temperature=None,
        )

        def hf_run(static: bool, k: int = n):
            def run():
                kw = dict(cache_implementation="static", compile_config=compile_cfg) if static else {}
                out = hf.generate(**hf_kw, max_new_tokens=k, **kw)
                assert out.shape[1] - width == k
                return out[:, width:].tolist()

            return run

        soft, outputs = {}, {}

        def ours(model, method: str, k: int = n):
            def run():
                res = selar.generate(
                    model,
                    prompts,
                    method,
                    prompt_token_ids=enc,
                    temperature=0,
                    max_new_tokens=k,
                    ignore_eos=True,
                    batch_size=b,
                )
                assert all(r.num_tokens == k for r in res)
                if k == n and model is on:
                    soft[method] = sum(r.num_soft_steps for r in res) / (k * b)
                    outputs[method] = [r.token_ids for r in res]

            return run

        fns = [hf_run(False), hf_run(True), ours(off, "cot"), ours(on, "cot"), ours(on, "selar")]
        keep = [i for i in range(len(fns)) if not (args.skip_hf_compile and i == 1)]
        fns = [fns[i] for i in keep]
        with torch.no_grad():
            first = [_timed(f) for f in fns]  # warm-up: compiles
            times = interleaved(fns, args.repeats)
            one = interleaved([hf_run(False, 1), ours(on, "cot", 1)], args.repeats)  # prefill + 1 token
        med = [statistics.median(t) for t in times]
        full = dict(zip([NAMES[i] for i in keep], med))
        if 1 in keep:
            compile_times[f"generate static+compile, batch {b}"] = first[keep.index(1)] - full[NAMES[1]]
        ref = hf_run(False)()
        same = sum(a == r for a, r in zip(outputs["cot"], ref))
        decode = {
            "generate": b * (n - 1) / (full["generate"] - statistics.median(one[0])),
            "cot": b * (n - 1) / (full["cot"] - statistics.median(one[1])),
        }
        rows.append((b, {k: b * n / v for k, v in full.items()}, decode, soft.get("selar", 0.0), same))
    compile_times[f"selar cot/selar (compile=on), batch sizes {args.batch_sizes}"] = on.compile_seconds

    print()
    heads = [NAMES[i] for i in keep]
    print(f"{'batch':>5} " + " ".join(f"{h + ' tok/s':>{max(len(h) + 6, 12)}}" for h in heads))
    for b, tps, _, _, _ in rows:
        print(f"{b:>5} " + " ".join(f"{tps[h]:>{max(len(h) + 6, 12)}.1f}" for h in heads))
    print()
    cols = [
        "cot/generate",
        "cot/static+compile",
        "cot/cot eager",
        "selar/cot",
        "selar/generate",
        "floor (b=1)",
        "soft steps",
        "cot==generate rows",
    ]
    print(f"{'batch':>5} " + " ".join(f"{c:>{len(c) + 2}}" for c in cols))
    for b, tps, dec, soft_share, same in rows:
        hfc = tps.get(NAMES[1])
        vals = [
            f"{tps['cot'] / tps['generate']:.3f}",
            f"{tps['cot'] / hfc:.3f}" if hfc else "-",
            f"{tps['cot'] / tps['cot eager']:.3f}",
            f"{tps['selar'] / tps['cot']:.3f}",
            f"{tps['selar'] / tps['generate']:.3f}",
            f"{dec['cot'] / (bw / wbytes):.3f}" if b == 1 else "-",
            f"{soft_share:.1%}",
            f"{same}/{b}",
        ]
        print(f"{b:>5} " + " ".join(f"{v:>{len(c) + 2}}" for v, c in zip(vals, cols)))
    print()
    for b, _, dec, _, _ in rows:
        print(
            f"batch {b}: decode-only tok/s (prefill subtracted): generate {dec['generate']:.1f}, cot {dec['cot']:.1f}"
        )
    for k, v in compile_times.items():
        print(f"compile time, {k}: {v:.1f} s")
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
