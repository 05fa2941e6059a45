"""tau=auto held out: calibrate SeLaR's tau on one half of a dataset's prompts, decode the other
half at that tau, and compare its soft-step share with the target (issue 30's acceptance: within 3
points). The evaluation protocol's options (prompt, per-dataset options, answer guard), --limit
tokens per row in both halves.

    python benchmarks/tau_auto.py --model qwen2.5-coder-0.5b --datasets gsm8k,math500 --prompts 32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import selar
from selar.decode import new_session, run_continuous
from selar.eval import datasets as ds
from selar.eval import protocol
from selar.eval.calibrate import calibrate_tau
from selar.eval.runner import row_seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--datasets", default="gsm8k,math500")
    ap.add_argument("--prompts", type=int, default=32, help="prompts per half")
    ap.add_argument("--limit", type=int, default=512, help="new tokens per row")
    ap.add_argument("--target", type=float, default=0.10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args()
    model = selar.load_model(a.model, dtype=a.dtype, compile="off")
    out = {"model": a.model, "dtype": a.dtype, "limit": a.limit, "target": a.target, "datasets": {}}
    for name in a.datasets.split(","):
        probs = ds.load(name)[: 2 * a.prompts]
        half_a, half_b = probs[: a.prompts], probs[a.prompts :]
        opts = {**protocol.defaults(name, "selar", thinking=model.is_thinking), "max_new_tokens": a.limit}
        opts["soft_target"] = a.target

        def ids_of(ps):
            return [selar.format_prompt(model, protocol.render_prompt(p.question)) for p in ps]

        t0 = time.perf_counter()
        cal = calibrate_tau(
            model, "selar", ids_of(half_a), [row_seed(0, name, p.id, 0) for p in half_a], opts, a.batch_size
        )
        t1 = time.perf_counter()
        cfg = selar.make_config("selar", **{**{k: v for k, v in opts.items() if k != "soft_target"}, "tau": cal["tau"]})
        soft = tokens = 0
        seeds = [row_seed(0, name, p.id, 0) for p in half_b]
        for row in run_continuous(new_session(model, cfg), ids_of(half_b), seeds, a.batch_size):
            soft += sum(row.soft)
            tokens += len(row.token_ids)
        share = soft / max(tokens, 1)
        res = {**cal, "held_out_prompts": len(half_b), "held_out_tokens": tokens, "held_out_soft_share": share}
        res.update(calibrate_s=round(t1 - t0, 1), held_out_s=round(time.perf_counter() - t1, 1))
        out["datasets"][name] = res
        print(
            f"{name}: tau={cal['tau']:.4f} from {cal['prompts']} prompts ({cal['steps']} steps, "
            f"{cal['soft_share'] * 100:.1f}% above it); held out {len(half_b)} prompts: "
            f"{share * 100:.1f}% soft of {tokens} tokens (target {a.target * 100:.0f}%, "
            f"{abs(share - a.target) * 100:.1f} points off)",
            flush=True,
        )
        if a.out:  # after every dataset: a long run that is stopped keeps what it measured
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
