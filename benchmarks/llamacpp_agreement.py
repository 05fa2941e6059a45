"""How closely the llama.cpp engine follows the transformers engine, and why it does not follow
it exactly on a quantised GGUF.

    python benchmarks/llamacpp_agreement.py --model qwen2.5-coder-0.5b

Greedy, the first --new-tokens tokens of 4 GSM8K-style prompts, against the transformers engine
in float32 on the same (dequantised) weights; for each pair, `selar.analysis.agreement`:
free-running (each engine on its own; one near-tie decided differently changes the rest of the
row) and teacher-forced (fed the same inputs, the same next token).

- llama.cpp on the GGUF as shipped (quantised weights x 8-bit activations, f16 KV cache);
- llama.cpp on the same weights written as float32 (`convert_gguf`) with a float32 KV cache:
  what the engine itself does, without quantised arithmetic;
- the transformers engine in bfloat16: how far the same engine moves when only its arithmetic
  changes by about as much as 8-bit activations do (the noise floor of free-running agreement).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from decode_speed import PROMPTS

import selar
from selar.analysis.agreement import agreement
from selar.engines.llamacpp import convert_gguf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--methods", default="cot,selar")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument(
        "--no-bf16", action="store_true", help="skip the transformers bfloat16 row (slow without native bf16)"
    )
    args = ap.parse_args()
    prompts, methods = PROMPTS[:4], [m for m in args.methods.split(",") if m]

    ref = selar.load_model(args.model, dtype="float32")
    with tempfile.TemporaryDirectory() as tmp:
        pairs = [
            ("llama.cpp, GGUF as shipped", lambda: selar.load_model(args.model, engine="llamacpp", max_rows=4)),
            (
                "llama.cpp, float32 GGUF + KV",
                lambda: selar.load_model(
                    str(convert_gguf(args.model, Path(tmp) / "f32.gguf", "f32")),
                    engine="llamacpp",
                    max_rows=4,
                    kv_type="f32",
                    flash_attn=False,
                ),
            ),
        ]
        if not args.no_bf16:
            pairs.append(("transformers, bfloat16", lambda: selar.load_model(args.model, dtype="bfloat16")))
        rows = []
        for label, load in pairs:
            other = load()
            for m in methods:
                a = agreement(ref, other, prompts, m, max_new_tokens=args.new_tokens, batch_size=4)
                rows.append((label, m, a))
                print(f"{label} / {m}: {a}", flush=True)
            del other

    print(
        f"\nagreement with the transformers engine in float32 ({args.model}, greedy, "
        f"{len(prompts)} prompts x {args.new_tokens} tokens)"
    )
    w = max(6, *(len(m) for m in methods))
    print(f"{'against':<30} {'method':<{w}} {'free-running':>12} {'teacher-forced':>14} {'max |dlogit|':>12}")
    for label, m, a in rows:
        print(f"{label:<30} {m:<{w}} {a.free:>12.1%} {a.forced:>14.1%} {a.max_logit_diff:>12.3f}")


if __name__ == "__main__":
    main()
