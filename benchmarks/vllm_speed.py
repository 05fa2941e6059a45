"""vLLM with selar's plugin vs stock vLLM vs the transformers engine, measured in one run; plus
the acceptance check that greedy selar gives the transformers engine's tokens.

    python benchmarks/vllm_speed.py --model qwen2.5-coder-0.5b --batch-size 8 --new-tokens 128

Needs vLLM in the environment (see the README's "vLLM engine" section). All three run the same
weights at the same dtype (float32 by default: the transformers engine's best dtype on CPUs
without bf16). Every row generates exactly --new-tokens tokens (stop tokens ignored); each
figure is the best of --repeats interleaved rounds and includes the prefill.
  vLLM + selar:  the plugin model, every request asks for `--method`
  vLLM + cot:    the plugin model, requests ask for `cot` (the plugin's cost without soft inputs)
  vLLM plain:    stock vLLM (no plugin model, no logits processor), greedy
  transformers:  selar's transformers engine, `--method`
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from decode_speed import PROMPTS, interleaved  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--method", default="selar")
    ap.add_argument("--eager", action="store_true", help="vLLM without torch.compile (faster start, slower steps)")
    ap.add_argument("--check-tokens", type=int, default=64, help="acceptance: greedy tokens compared on 4 prompts")
    args = ap.parse_args()

    import selar
    from selar.engines.vllm import default_environment, engine_kwargs, resolve_folder

    default_environment()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    b, n = args.batch_size, args.new_tokens
    tm = selar.load_model(args.model, dtype=args.dtype)
    vl = selar.load_model(
        args.model, engine="vllm", dtype=args.dtype, max_num_seqs=b, max_model_len=2048, enforce_eager=args.eager
    )
    folder, _ = resolve_folder(args.model)
    plain = LLM(
        **engine_kwargs(
            folder,
            None,
            dtype=args.dtype,
            max_num_seqs=b,
            max_model_len=2048,  # stock vLLM
            enforce_eager=args.eager,
        )
    )

    # acceptance 1: greedy selar, 4 prompts, same tokens on both engines (stop tokens on)
    check = PROMPTS[:4]
    want = selar.generate(tm, check, args.method, temperature=0, max_new_tokens=args.check_tokens, batch_size=4)
    got = selar.generate(vl, check, args.method, temperature=0, max_new_tokens=args.check_tokens)
    same = sum(w.token_ids == g.token_ids for w, g in zip(want, got))
    agree = sum(x == y for w, g in zip(want, got) for x, y in zip(w.token_ids, g.token_ids))
    total = sum(max(len(w.token_ids), len(g.token_ids)) for w, g in zip(want, got))
    print(
        f"greedy {args.method}, {len(check)} prompts x {args.check_tokens} tokens, {args.dtype}: {same}/{len(check)} "
        f"rows identical, {agree}/{total} tokens; soft steps transformers "
        f"{[w.num_soft_steps for w in want]} vs vLLM {[g.num_soft_steps for g in got]}"
    )

    for m in (tm, vl):
        m.stop_ids = []  # fixed-length rows
    prompts = (PROMPTS * ((b + len(PROMPTS) - 1) // len(PROMPTS)))[:b]
    enc = [selar.format_prompt(tm, p) for p in prompts]
    soft = {}

    def run_selar(model, method):
        res = selar.generate(
            model, prompts, method, prompt_token_ids=enc, temperature=0, max_new_tokens=n, batch_size=b
        )
        assert all(r.num_tokens == n for r in res)
        soft[(model.engine, method)] = sum(r.num_soft_steps for r in res) / (b * n)

    def run_plain():
        sp = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
        outs = plain.generate([TokensPrompt(prompt_token_ids=e) for e in enc], sp, use_tqdm=False)
        assert all(len(o.outputs[0].token_ids) == n for o in outs)

    fns = [
        lambda: run_selar(vl, args.method),
        lambda: run_selar(vl, "cot"),
        run_plain,
        lambda: run_selar(tm, args.method),
    ]
    for f in fns[:3]:  # warm-up (vLLM's first batches)
        f()
    best = interleaved(fns, args.repeats)
    tps = [b * n / t for t in best]
    names = [f"vLLM + {args.method}", "vLLM + cot (plugin)", "vLLM plain", f"transformers + {args.method}"]
    print(
        f"\nmodel {args.model}, {args.dtype}, batch {b}, {n} new tokens per row, best of {args.repeats}"
        f"{' (vLLM eager)' if args.eager else ''}"
    )
    print(f"{'':<26}{'tok/s':>8}")
    for name, t in zip(names, tps):
        print(f"{name:<26}{t:>8.1f}")
    print(f"\nvLLM + {args.method} / transformers + {args.method}: {tps[0] / tps[3]:.2f}x (goal >= 1.3x)")
    print(f"vLLM + {args.method} / vLLM plain: {tps[0] / tps[2]:.3f} (goal >= 0.90)")
    print(f"soft steps: vLLM {soft[('vllm', args.method)]:.1%}, transformers {soft[('transformers', args.method)]:.1%}")


if __name__ == "__main__":
    main()
