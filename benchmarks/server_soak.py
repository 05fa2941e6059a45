"""Soak test of `selar serve` on loopback (not a unit test): N concurrent streaming chat clients
for M minutes, each sending its next request as soon as the last one ends (mixed methods and
lengths). Prints one line: requests, 5xx (HTTP or in-stream error events; must be 0), other
errors, p50/p99 latency, tokens/s, and the server's RSS at start and end.

    python benchmarks/server_soak.py --model smollm2-135m --streams 64 --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time

import httpx
import openai
import psutil
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
METHODS = ["selar", "cot", "soft-thinking", "swir"]


async def worker(client, rng: random.Random, deadline: float, stats: dict, max_tokens: int) -> None:
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:
            stream = await client.chat.completions.create(
                model="selar",
                messages=[{"role": "user", "content": rng.choice(QUESTIONS)}],
                stream=True,
                max_tokens=rng.randint(max_tokens // 4, max_tokens),
                stream_options={"include_usage": True},
                seed=rng.randrange(1 << 31),
                extra_body={"method": rng.choice(METHODS)},
            )
            tokens = 0
            async for chunk in stream:
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
            stats["latency"].append(time.perf_counter() - t0)
            stats["tokens"] += tokens
        except openai.APIStatusError as e:
            stats["5xx" if e.status_code >= 500 else "4xx"] += 1
        except openai.APIError as e:  # an error event inside the stream
            code = (e.body or {}).get("code") if isinstance(e.body, dict) else None
            stats["5xx" if not isinstance(code, int) or code >= 500 else "4xx"] += 1
        except Exception:  # noqa: BLE001 - connection errors, timeouts
            stats["other"] += 1
        stats["requests"] += 1


async def soak(url: str, streams: int, minutes: float, max_tokens: int, seed: int) -> dict:
    stats = {"requests": 0, "5xx": 0, "4xx": 0, "other": 0, "tokens": 0, "latency": []}
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=streams + 8), timeout=600)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, http_client=http)
    deadline = time.monotonic() + minutes * 60
    t0 = time.perf_counter()
    await asyncio.gather(
        *[worker(client, random.Random(seed + i), deadline, stats, max_tokens) for i in range(streams)]
    )
    stats["wall"] = time.perf_counter() - t0
    await client.close()
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--max-tokens", type=int, default=64, help="requests ask for max_tokens in [max/4, max]")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    queue = 4 * args.streams
    with (
        tempfile.TemporaryFile("w+") as log,
        selar_server(args.model, max_batch=args.max_batch, max_queue=queue, log=log) as (server, url),
    ):
        measure(args, server, url)


def measure(args, server, url: str) -> None:
    proc = psutil.Process(server.pid)
    asyncio.run(soak(url, 4, 0.1, 16, args.seed + 10_000))  # warm-up
    rss0 = proc.memory_info().rss
    s = asyncio.run(soak(url, args.streams, args.minutes, args.max_tokens, args.seed))
    rss1 = proc.memory_info().rss
    lat = sorted(s["latency"])
    p50 = lat[len(lat) // 2] if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan")
    metrics = httpx.get(url + "/metrics", timeout=10).text
    faults = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("selar_faults_total"))
    print(
        f"soak: {s['requests']} requests in {s['wall'] / 60:.1f} min ({args.streams} streams, {args.model}, "
        f"max_tokens<={args.max_tokens}, methods {'/'.join(METHODS)}): 5xx {s['5xx']}, 4xx {s['4xx']}, "
        f"other errors {s['other']}; latency p50 {p50:.2f} s, p99 {p99:.2f} s; "
        f"{s['tokens'] / s['wall']:.1f} tokens/s; server faults {faults:.0f}; "
        f"server RSS {rss0 / 2**20:.0f} MiB at start, {rss1 / 2**20:.0f} MiB at end"
    )
    if s["5xx"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
