"""llama.cpp engine vs transformers engine: SeLaR (and CoT) tokens/s on the same catalog model,
at batch 1 and 8, measured in one run; plus where llama.cpp's time goes.

    python benchmarks/llamacpp_speed.py --model qwen2.5-coder-0.5b --batch-sizes 1,8 --new-tokens 128

Both engines run the same GGUF weights (transformers dequantised, at --dtype; llama.cpp
quantised). Every row generates exactly --new-tokens tokens (stop tokens disabled); each figure
is the best of --repeats interleaved rounds and includes the prefill. The profile part times
raw `llama_decode` calls without any method: all rows in one call per step (what the engine
does) against one call per row (the naive loop), and the engine's own share of a step.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from decode_speed import PROMPTS, interleaved

import selar


def raw_decode(model, rows: int, steps: int, per_row: bool) -> float:
    """Tokens/s of bare llama_decode over `rows` sequences after a 64-token prompt each."""
    from selar.engines.llamacpp import _Batch

    lib, ctx = model.lib, model.context_handle()
    seqs = model.alloc_seqs(raw_decode, rows)
    b = _Batch(lib, max(512, rows * 64))
    n = rows * 64
    b.token[:n] = 1000 + np.arange(n) % 500
    b.pos[:n] = np.tile(np.arange(64), rows)
    b.seq[:n] = np.repeat(seqs, 64)
    b.out[:n] = 0
    b.b.n_tokens = n
    assert lib.llama_decode(ctx, b.b) == 0
    t0 = time.perf_counter()
    for s in range(steps):
        groups = [[i] for i in range(rows)] if per_row else [list(range(rows))]
        for g in groups:
            k = len(g)
            b.token[:k] = 2000 + s
            b.pos[:k] = 64 + s
            b.seq[:k] = seqs[g]
            b.out[:k] = 1
            b.b.n_tokens = k
            assert lib.llama_decode(ctx, b.b) == 0
            np.ctypeslib.as_array(lib.llama_get_logits(ctx), shape=(k, model.n_vocab)).copy()
    dt = time.perf_counter() - t0
    model.free_seqs(seqs)
    return rows * steps / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--dtype", default="auto", help="of the transformers engine (auto: bf16 where the CPU has it)")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--methods", default="cot,selar")
    args = ap.parse_args()
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    methods = [m for m in args.methods.split(",") if m]

    tm = selar.load_model(args.model, dtype=args.dtype)
    lm = selar.load_model(args.model, engine="llamacpp", max_rows=max(sizes), context=2048)
    for m in (tm, lm):
        m.stop_ids = []
    print(
        f"model {args.model}; transformers {tm.dtype} ({torch.get_num_threads()} threads) vs llama.cpp "
        f"{lm.gguf.name} ({lm.threads} threads); {args.new_tokens} new tokens per row, best of {args.repeats}"
    )

    rows = []
    for b in sizes:
        prompts = (PROMPTS * ((b + len(PROMPTS) - 1) // len(PROMPTS)))[:b]
        enc = [selar.format_prompt(tm, p) for p in prompts]
        soft = {}

        def run(model, method, b=b, prompts=prompts, enc=enc):
            res = selar.generate(
                model,
                prompts,
                method,
                prompt_token_ids=enc,
                temperature=0,
                max_new_tokens=args.new_tokens,
                batch_size=b,
            )
            soft[(model.engine, method)] = sum(r.num_soft_steps for r in res) / sum(r.num_tokens for r in res)

        fns = [(lambda m=m, e=e: run(e, m)) for m in methods for e in (tm, lm)]
        for f in fns:  # warm-up
            pass
        run(tm, methods[0])
        run(lm, methods[0])
        best = interleaved(fns, args.repeats)
        for i, m in enumerate(methods):
            t_tf, t_cpp = best[2 * i], best[2 * i + 1]
            rows.append(
                (
                    b,
                    m,
                    b * args.new_tokens / t_tf,
                    b * args.new_tokens / t_cpp,
                    t_tf / t_cpp,
                    soft[("transformers", m)],
                    soft[("llamacpp", m)],
                )
            )

    print(
        f"{'batch':>5}  {'method':<6}  {'transformers tok/s':>18}  {'llama.cpp tok/s':>15}  {'ratio':>6}  "
        f"{'soft (tf)':>9}  {'soft (cpp)':>10}"
    )
    for b, m, a, c, r, s1, s2 in rows:
        print(f"{b:>5}  {m:<6}  {a:>18.1f}  {c:>15.1f}  {r:>5.2f}x  {s1:>8.1%}  {s2:>9.1%}")

    print("\nwhere llama.cpp's time goes (bare llama_decode, no method, 32 steps after a 64-token prompt):")
    b1 = raw_decode(lm, 1, 32, per_row=False)
    print(f"  batch 1: {b1:.1f} tok/s ({1000 / b1:.1f} ms a step)")
    for b in [s for s in sizes if s > 1]:
        loop = raw_decode(lm, b, 32, per_row=True)
        batched = raw_decode(lm, b, 32, per_row=False)
        print(
            f"  batch {b}: one call per row {loop:.1f} tok/s; all rows in one call {batched:.1f} tok/s "
            f"({batched / loop:.2f}x the per-row loop, {batched / b1:.2f}x batch 1; "
            f"{1000 * b / batched:.1f} ms a step)"
        )
    for b, m, a, c, r, s1, s2 in rows:
        if m == methods[0] and b in sizes:
            raw = b1 if b == 1 else raw_decode(lm, b, 16, per_row=False)
            print(
                f"  engine + {m} at batch {b}: {c:.1f} tok/s incl. prefill vs bare decode {raw:.1f} "
                f"(prefill and Python work: {1 - c / raw:.0%} of the time)"
            )


if __name__ == "__main__":
    main()
