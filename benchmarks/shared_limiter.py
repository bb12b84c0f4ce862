"""The cost of sharing limits through Redis.

What it measures, all in one run against a redis-server it starts on loopback:
  1. One `RedisLimiter.acquire` with no effective limit: microseconds per call, and Redis round trips
     per request (counted from Redis's own `INFO commandstats`: EVAL/EVALSHA calls / requests, after one
     warm-up call has loaded the script, a one-time cost). The
     in-process limiter's acquire, timed the same way, for comparison.
  2. Requests/second through one processor against the mock (no latency, no effective limit), with the
     Redis limiter vs. the in-process one, alternating runs: the price of one round trip per request.

Targets (ours): one Redis round trip per request, and at least 0.3 of the in-process throughput, since
one machine's throughput already exceeds most tiers' limits and what sharing buys is the account's
limit held by many processes. Run: .venv/bin/python benchmarks/shared_limiter.py
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Figure, chat_request, format_table, without_metadata  # noqa: E402

from rate_limited_processor import UNLIMITED, InProcessLimiter, Limits, Processor, Settings  # noqa: E402
from rate_limited_processor.mock_server.child import MockProcess  # noqa: E402

HUGE = Limits(10**9, 10**12)  # finite, so the Redis script does the whole bucket arithmetic


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("no redis-server binary: install Debian's redis-server package")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


async def acquire_cost(url: str, n: int) -> tuple[float, float, float]:
    """(µs per Redis acquire, Redis round trips per acquire, µs per in-process acquire)."""
    import redis.asyncio as redis

    from rate_limited_processor.engine.shared_limiter import RedisLimiter

    shared = await RedisLimiter.connect(url, "bench-acquire", HUGE)
    await shared.acquire(10)  # loads the script (its first EVALSHA finds none): a one-time cost
    client = redis.from_url(url)
    await client.config_resetstat()
    started = time.perf_counter()
    for _ in range(n):
        await shared.acquire(10)
    redis_us = (time.perf_counter() - started) / n * 1e6
    stats = await client.info("commandstats")
    calls = sum(value["calls"] for name, value in stats.items() if name in ("cmdstat_evalsha", "cmdstat_eval"))
    await client.aclose()
    await shared.aclose()
    local = InProcessLimiter(HUGE)
    started = time.perf_counter()
    for _ in range(n):
        await local.acquire(10)
    return redis_us, calls / n, (time.perf_counter() - started) / n * 1e6


async def throughput(url: str | None, mock: MockProcess, n: int) -> float:
    settings = Settings(request_url=mock.url("chat/completions"), limits=UNLIMITED, max_in_flight=100)
    limiter = None
    if url is not None:
        from rate_limited_processor.engine.shared_limiter import RedisLimiter

        limiter = await RedisLimiter.connect(url, "bench-run", HUGE)
    processor = Processor(settings, limiter=limiter)
    started = time.perf_counter()
    async for _ in processor.process(without_metadata(chat_request(i)) for i in range(n)):
        pass
    elapsed = time.perf_counter() - started
    if limiter is not None:
        await limiter.aclose()
    return n / elapsed


def main(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--acquires", type=int, default=5_000)
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    redis_process, url = start_redis()
    try:
        redis_us, trips, local_us = asyncio.run(acquire_cost(url, args.acquires))
        print(format_table(["limiter", "µs per acquire", "Redis round trips per request"], [
            ["Redis (shared)", f"{redis_us:.0f}", f"{trips:.2f}"], ["in-process", f"{local_us:.1f}", "0"],
        ]))
        best = {"redis": 0.0, "local": 0.0}
        with MockProcess() as mock:
            for _ in range(args.rounds):
                for name, limiter_url in (("local", None), ("redis", url)):
                    rate = asyncio.run(throughput(limiter_url, mock, args.requests))
                    best[name] = max(best[name], rate)
                    print(f"  {name}: {rate:,.0f} req/s", flush=True)
        ratio = best["redis"] / best["local"]
        print(f"requests/s through one process, Redis limiter / in-process: {ratio:.2f} "
              f"({best['redis']:,.0f} vs {best['local']:,.0f}, best of {args.rounds})")
    finally:
        redis_process.terminate()
        redis_process.wait()
    return [Figure("shared: Redis round trips per request", trips, "<=", 1.0), Figure("shared: req/s with Redis / in-process", ratio, ">=", 0.3)]


if __name__ == "__main__":
    main()
