"""Load test of `selar serve` on loopback: N concurrent streaming chat requests vs the same
requests sent one at a time. Prints completion counts, status codes and aggregate tokens/s.

    python benchmarks/server_load.py --model smollm2-135m --requests 64 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
import openai
from served import selar_server

QUESTIONS = [
    "How many clips did Natalia sell in April and May?",
    "What is 17 * 23?",
    "Name three prime numbers.",
    "Weng earns $12 an hour. How much for 50 minutes?",
    "What is the capital of France?",
    "Explain gravity in one sentence.",
    "Is 91 a prime number?",
    "What is 2 to the power 10?",
]


async def one(client, i: int, max_tokens: int, method: str):
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(
        model="selar",
        messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        seed=i,
        extra_body={"method": method},
    )
    tokens, first = 0, None
    async for chunk in stream:
        if (
            first is None
            and chunk.choices
            and (chunk.choices[0].delta.content or (chunk.choices[0].delta.model_extra or {}).get("reasoning_content"))
        ):
            first = time.perf_counter() - t0
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return tokens, first, time.perf_counter() - t0


async def run(url: str, n: int, concurrent: bool, max_tokens: int, method: str):
    client = openai.AsyncOpenAI(
        base_url=url + "/v1",
        api_key="x",
        max_retries=0,
        http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=n + 8), timeout=600),
    )
    t0 = time.perf_counter()
    if concurrent:
        results = await asyncio.gather(*[one(client, i, max_tokens, method) for i in range(n)], return_exceptions=True)
    else:
        results = []
        for i in range(n):
            try:
                results.append(await one(client, i, max_tokens, method))
            except Exception as e:  # noqa: BLE001
                results.append(e)
    wall = time.perf_counter() - t0
    await client.close()
    return results, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--method", default="selar")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--sequential", type=int, default=None, help="requests in the one-at-a-time run (default: all)")
    args = ap.parse_args()

    with selar_server(args.model, max_batch=args.max_batch, max_queue=4 * args.requests) as (_, url):
        asyncio.run(run(url, 2, False, 8, args.method))  # warm-up
        report = {}
        runs = (("concurrent", True, args.requests), ("sequential", False, args.sequential or args.requests))
        for name, conc, n in runs:
            results, wall = asyncio.run(run(url, n, conc, args.max_tokens, args.method))
            ok = [r for r in results if not isinstance(r, Exception)]
            errors = [r for r in results if isinstance(r, Exception)]
            five = [e for e in errors if isinstance(e, openai.APIStatusError) and e.status_code >= 500]
            toks = sum(r[0] for r in ok)
            ttft = sorted(r[1] for r in ok if r[1] is not None)
            report[name] = toks / wall
            print(
                f"{name:>10}: {len(ok)}/{n} completed, {len(errors)} errors ({len(five)} 5xx), {toks} tokens in "
                f"{wall:.1f} s = {toks / wall:.1f} tok/s; median time to first token "
                f"{ttft[len(ttft) // 2] if ttft else float('nan'):.2f} s"
            )
        print(f"aggregate throughput ratio concurrent/sequential: {report['concurrent'] / report['sequential']:.2f}x")


if __name__ == "__main__":
    main()
