"""The GPU check (`scripts/gpu-check`): for a bare CUDA machine with torch and transformers, no vLLM
and no internet. Random-weight models of real shapes built from inline configs (Qwen3-1.7B and
Qwen3-8B; a word-level tokenizer over their vocabulary), so nothing is downloaded:

1. correctness, float32, head scaled so greedy steps are decided (as the test suite's tiny models):
   `cot` greedy equals transformers' `generate` token for token (batch 1 and 8), and `selar`
   teacher-forced against a float64 copy of the model (tests/forced.py: tokens, gates, fed inputs);
2. speed, bfloat16: tokens/s of `cot` and `selar` (eager, and compiled: CUDA graphs) against
   transformers' eager and static+compile `generate` at batch 1, 8 and 32, and the batch-1 decode
   rate as a fraction of the bandwidth floor (weights read once per step at the measured bandwidth).

Each part prints as it goes; a part that would overrun the time budget is skipped and says so.

    python benchmarks/gpu_check.py                      # on a GPU
    python benchmarks/gpu_check.py --device cpu --smoke # the same code on tiny shapes (CPU)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path[:0] = [os.path.dirname(__file__), os.path.join(os.path.dirname(__file__), "..", "tests")]

import selar  # noqa: E402

QWEN3 = {  # the published shapes (config.json of Qwen/Qwen3-1.7B and Qwen/Qwen3-8B)
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=32, tie_word_embeddings=False),
}  # fmt: skip
VOCAB = {"qwen3-1.7b": 151936, "qwen3-8b": 151936, "smoke": 4096}


def tokenizer(vocab: int):
    """A word-level tokenizer over `vocab` made-up words (ids only matter here)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(vocab - 2)} | {"<pad>": vocab - 2, "<eos>": vocab - 1}
    t = Tokenizer(models.WordLevel(words, unk_token="w0"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<eos>")


def build(name: str, dtype: torch.dtype, device: str, head_scale: float = 1.0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=VOCAB[name], max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-6,
                      bos_token_id=None, eos_token_id=None, pad_token_id=VOCAB[name] - 2, **QWEN3[name])  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg).to(dtype).eval()
    if head_scale != 1.0:
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(head_scale)
    return model


def prompts(vocab: int, batch: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, vocab - 2, (int(n),), generator=g).tolist()
        for n in torch.randint(16, 48, (batch,), generator=g)
    ]


def correctness(name: str, device: str, new: int) -> None:
    import forced

    tok = tokenizer(VOCAB[name])
    hf = build(name, torch.float32, device, head_scale=8.0)
    m = selar.wrap(hf, tok, name=name, compile="off")
    for b in (1, 8):
        ids = prompts(VOCAB[name], b)
        got = selar.generate(m, ["x"] * b, "cot", prompt_token_ids=ids, temperature=0, max_new_tokens=new,
                             ignore_eos=True, batch_size=b)  # fmt: skip
        same = 0
        for p, r in zip(ids, got):
            want = hf.generate(torch.tensor([p], device=device), max_new_tokens=new, do_sample=False, eos_token_id=None,
                               pad_token_id=tok.pad_token_id)[0, len(p):].tolist()  # fmt: skip
            same += r.token_ids == want
        print(f"[{name}] cot greedy == generate (float32, batch {b}, {new} tokens): {same}/{b} rows", flush=True)
    ref = selar.wrap(build(name, torch.float64, device, head_scale=8.0), tok, name=name + "-f64", compile="off")
    rep = forced.compare(m, ref.make_engine(), prompts(VOCAB[name], 4), "selar", tol=1e-3, max_new_tokens=new)
    print(f"[{name}] selar teacher-forced against float64: {rep}", flush=True)
    del hf, m, ref
    if device == "cuda":
        torch.cuda.empty_cache()


def speed(name: str, device: str, batches: list[int], new: int, repeats: int, deadline: float) -> None:
    from decode_speed import interleaved, read_bandwidth, weight_bytes
    from transformers import CompileConfig

    tok = tokenizer(VOCAB[name])
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    hf = build(name, dtype, device)
    eager, comp = (selar.wrap(hf, tok, name=name, compile=c) for c in ("off", "on"))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    bw = read_bandwidth() if device == "cpu" else _cuda_bandwidth()
    floor = bw / weight_bytes(hf)
    print(f"[{name}] {dtype}, bandwidth {bw / 1e9:.0f} GB/s, floor {floor:.1f} tok/s at batch 1", flush=True)
    cc = CompileConfig(fullgraph=True, dynamic=False)
    for b in batches:
        if time.monotonic() > deadline:
            print(f"[{name}] batch {b}: skipped (time budget)", flush=True)
            continue
        ids = prompts(VOCAB[name], b)
        width = max(map(len, ids))
        inp = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in ids], device=device)
        pad = torch.tensor([width - len(p) for p in ids], device=device)
        mask = (torch.arange(width, device=device)[None] >= pad[:, None]).long()

        def gen(static: bool):
            kw = dict(cache_implementation="static", compile_config=cc) if static else {}
            return lambda: (hf.generate(input_ids=inp, attention_mask=mask, max_new_tokens=new, do_sample=False,
                                        eos_token_id=None, pad_token_id=tok.pad_token_id, **kw), sync())  # fmt: skip

        def ours(model, method: str):
            return lambda: (selar.generate(model, ["x"] * b, method, prompt_token_ids=ids, temperature=0,
                                           max_new_tokens=new, ignore_eos=True, batch_size=b), sync())  # fmt: skip

        fns = {"generate": gen(False), "generate static+compile": gen(True)}
        for label, model in (("eager", eager), ("compiled", comp)):
            fns |= {f"{method} {label}": ours(model, method) for method in ("cot", "selar")}
        with torch.no_grad():
            for f in fns.values():  # warm-up: compiles
                f()
            med = [statistics.median(t) for t in interleaved(list(fns.values()), repeats)]
        tps = {k: b * new / v for k, v in zip(fns, med)}
        line = ", ".join(f"{k} {v:.0f}" for k, v in tps.items())
        print(f"[{name}] batch {b} tok/s: {line}", flush=True)
        ratios = {
            "cot compiled/static+compile": tps["cot compiled"] / tps["generate static+compile"],
            "selar compiled/cot compiled": tps["selar compiled"] / tps["cot compiled"],
            "cot eager/generate": tps["cot eager"] / tps["generate"],
        }
        if b == 1:
            ratios["floor fraction (cot compiled, prefill included)"] = tps["cot compiled"] / floor
        print(f"[{name}] batch {b} ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()), flush=True)


def _cuda_bandwidth() -> float:
    x = torch.ones(2**28, device="cuda")  # 1 GiB
    x.sum()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        x.sum()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes instead of Qwen3's (checks the script itself)")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds; later speed rows are skipped past it")
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    t0 = time.monotonic()
    deadline = t0 + args.budget
    info = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"gpu-check: torch {torch.__version__}, device {info}, budget {args.budget:.0f} s", flush=True)
    names = ["smoke"] if args.smoke else ["qwen3-1.7b", "qwen3-8b"]
    correctness(names[0], args.device, 32)
    for name in names:
        speed(name, args.device, [1, 8, 32], args.new_tokens, 3, deadline)
    print(f"gpu-check: done in {time.monotonic() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
