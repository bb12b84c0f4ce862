"""Overhead: how much slower is the processor than the simplest correct client, when nothing limits either?

What it measures. Requests per second through `Processor` (`UNLIMITED`, so the limiter never
waits) against the mock with no limits and no latency, divided by requests per second of a bare aiohttp
loop (one ClientSession, a semaphore of the same concurrency, POST each body, read its JSON) against the
same mock in the same run. The difference is what the processor adds per request: validation, token
estimation, the limiter, classification, stats, results.

How. The mock runs in its own process, so its CPU is not charged to the client; on a 2-core machine the
client gets a core of its own. Runs alternate (bare, ours, bare, ours, ...) after a warm-up of each, so
drift on a noisy machine hits both alike; we report the best run of each (noise only ever slows a run
down) and their ratio, with the medians beside them. Client CPU per request (user + sys of this process)
is reported too: it is the steadier figure when the machine is busy. So is the mock's CPU share: near
100% would mean the mock, not the client, set the pace. The micro-timings at the end time the processor's
per-request pieces on their own, to point at a bottleneck; `--profile` runs cProfile over one processor
run and prints the top functions.

Target: ratio >= 0.4.

Run: .venv/bin/python benchmarks/overhead.py [--requests 15000] [--concurrency 100] [--rounds 3] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import resource
import statistics
import sys
import time
import timeit
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from _common import Figure, chat_request, format_table, without_metadata

from rate_limited_processor import UNLIMITED, Processor, Settings, TokenEstimator
from rate_limited_processor.endpoints import Endpoint
from rate_limited_processor.limiter import InProcessLimiter
from rate_limited_processor.mock_server.child import MockProcess
from rate_limited_processor.retry_policy import HTTPOutcome, classify
from rate_limited_processor.status import RunStats

TARGET_RATIO = 0.4
WARM_UP_REQUESTS = 500

Client = Callable[[str, list[dict[str, Any]], int], Coroutine[Any, Any, int]]


async def bare_loop(url: str, requests: list[dict[str, Any]], concurrency: int) -> int:
    """The baseline: what any hand-written client does at minimum. Returns the 200s it got."""
    slots = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    bodies = [without_metadata(request) for request in requests]  # as the processor sends them
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(body: dict[str, Any]) -> int:
            async with slots, session.post(url, json=body) as response:
                await response.json()
                return response.status == 200

        return sum(await asyncio.gather(*(post(body) for body in bodies)))


async def processor(url: str, requests: list[dict[str, Any]], concurrency: int) -> int:
    """The product, consumed as a library user would: iterate the results. Returns the successes."""
    settings = Settings(request_url=url, limits=UNLIMITED, max_in_flight=concurrency)
    succeeded = 0
    async for result in Processor(settings).process(requests):
        succeeded += result.succeeded
    return succeeded


@dataclass(frozen=True, slots=True)
class Run:
    client: str
    seconds: float
    #: This process's user + sys CPU during the run.
    cpu_seconds: float
    #: The mock process's CPU during the run: near `seconds` means the mock, not the client, set the pace.
    mock_cpu_seconds: float
    requests: int

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        return 1e6 * self.cpu_seconds / self.requests

    @property
    def mock_busy(self) -> float:
        return self.mock_cpu_seconds / self.seconds


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_run(name: str, client: Client, mock: MockProcess, requests: list[dict[str, Any]], concurrency: int) -> Run:
    cpu, mock_cpu, started = _cpu(), mock.cpu_seconds(), time.perf_counter()
    ok: int = asyncio.run(client(mock.url("chat/completions"), requests, concurrency))
    seconds, cpu, mock_cpu = time.perf_counter() - started, _cpu() - cpu, mock.cpu_seconds() - mock_cpu
    if ok != len(requests):
        raise RuntimeError(f"{name}: only {ok} of {len(requests)} requests succeeded")
    return Run(name, seconds, cpu, mock_cpu, len(requests))


def record_both(stats: RunStats, reply: dict[str, Any]) -> None:
    stats.record_attempt(40, is_retry=False)
    stats.record_usage(40, reply)


def micro_timings() -> list[tuple[str, float]]:
    """Microseconds per call of the processor's per-request pieces, each on its own."""
    body = without_metadata(chat_request(12345))
    estimator = TokenEstimator()
    estimator.estimate(Endpoint.CHAT_COMPLETIONS, body)
    reply = {"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": "echo: hi"}}],
             "usage": {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33}}
    outcome = HTTPOutcome(status=200, headers={}, body=reply, text="")
    stats = RunStats(UNLIMITED)
    limiter = InProcessLimiter(UNLIMITED)

    async def acquire_many(n: int) -> None:
        for _ in range(n):
            await limiter.acquire(40)

    def per_call(function: Callable[[], object], number: int = 20_000) -> float:
        return 1e6 * min(timeit.repeat(function, number=number, repeat=3)) / number

    def limiter_acquire() -> float:
        n = 20_000
        started = time.perf_counter()
        asyncio.run(acquire_many(n))
        return 1e6 * (time.perf_counter() - started) / n

    return [
        ("TokenEstimator.estimate (chat)", per_call(lambda: estimator.estimate(Endpoint.CHAT_COMPLETIONS, body))),
        ("json.dumps(body)", per_call(lambda: json.dumps(body))),
        ("classify(200 outcome)", per_call(lambda: classify(outcome))),
        ("RunStats.record_attempt + record_usage", per_call(lambda: record_both(stats, reply))),
        ("InProcessLimiter.acquire (no limits)", limiter_acquire()),
    ]


def profile_once(url: str, requests: list[dict[str, Any]], concurrency: int, top: int = 20) -> str:
    """cProfile over one processor run: the functions with the most time of their own."""
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(processor(url, requests, concurrency))
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def figures(ratio: float) -> list[Figure]:
    return [Figure("overhead: ours / bare aiohttp req/s", ratio, ">=", TARGET_RATIO)]


def main(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=15_000, help="requests per timed run (default: 15000)")
    parser.add_argument("--concurrency", type=int, default=100, help="requests in flight, both clients (default: 100)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each client, alternating (default: 3)")
    parser.add_argument("--profile", action="store_true", help="also cProfile one processor run and print hot spots")
    parser.add_argument("--no_micro", action="store_true", help="skip the micro-timings")
    args = parser.parse_args(argv)

    requests = [chat_request(i) for i in range(args.requests)]
    clients: dict[str, Client] = {"bare": bare_loop, "ours": processor}
    runs: list[Run] = []
    with MockProcess() as mock:
        for name, client in clients.items():  # warm-up: tokenizer, imports, the mock's first connections
            timed_run(name, client, mock, requests[:WARM_UP_REQUESTS], args.concurrency)
        for _ in range(args.rounds):
            for name, client in clients.items():
                run = timed_run(name, client, mock, requests, args.concurrency)
                print(f"  {name}: {run.per_second:,.0f} req/s, {run.cpu_us_per_request:.0f} us CPU/request, "
                      f"mock busy {run.mock_busy:.0%}", file=sys.stderr, flush=True)
                runs.append(run)
        profile = profile_once(mock.url("chat/completions"), requests, args.concurrency) if args.profile else ""

    best = {name: max((r for r in runs if r.client == name), key=lambda r: r.per_second) for name in clients}
    median = {name: statistics.median(r.per_second for r in runs if r.client == name) for name in clients}
    cpu = {name: min(r.cpu_us_per_request for r in runs if r.client == name) for name in clients}
    ratio = best["ours"].per_second / best["bare"].per_second
    print(f"\nOverhead: {args.requests:,} chat requests per run, concurrency {args.concurrency}, "
          f"mock in its own process, {args.rounds} alternating runs of each")
    print(format_table(
        ["client", "best req/s", "median req/s", "least CPU us/req", "mock busy (best run)"],
        [[name, f"{best[name].per_second:,.0f}", f"{median[name]:,.0f}", f"{cpu[name]:.0f}", f"{best[name].mock_busy:.0%}"]
         for name in clients],
    ))
    print(f"ratio ours/bare: best {ratio:.2f} (target >= {TARGET_RATIO}), median {median['ours'] / median['bare']:.2f}; "
          f"client CPU per request ours/bare {cpu['ours'] / cpu['bare']:.2f}")
    if not args.no_micro:
        print("\nPer-request pieces of the processor, each timed alone:")
        print(format_table(["piece", "us/call"], [[name, f"{us:.1f}"] for name, us in micro_timings()]))
    if profile:
        print("\ncProfile of one processor run (top by own time; a coroutine counts a call per resumption):")
        print(profile)
    return figures(ratio)


if __name__ == "__main__":
    main()
