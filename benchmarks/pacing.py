"""Pacing: does the processor finish as soon as the limits allow, without tripping them?

What it measures. For each case, N requests go through the real `Processor` (real HTTP over loopback) to
the mock API enforcing the same limits the client paces itself by (burst_seconds=1, token_counting=
"tiktoken", so both sides count tokens alike). We report

    ratio = wall time to the last result / ideal,   ideal = max(N / (RPM/60), total_tokens / (TPM/60))

where total_tokens is the sum of the processor's own estimate for each request, counted once
(`RequestResult.estimated_tokens`). Not `stats.tokens_charged`: that counts every attempt, so a run that
retried would raise its own ideal and flatter itself. The mock charges each 200 the same count (its
`Served.tokens`); the "mock 200 tok" column says "same" when the two sides agree to the token. We also
report the mock's 429s (`record.count(429)`) as a % of requests.

Cases (each ~20 s by default):
  rpm      chat requests, RPM binds (6,000 RPM), TPM loose
  tpm      embeddings of varying length, TPM binds (150,000 TPM), RPM loose
  latency  chat, RPM binds (12,000 RPM), mock answers in 0.1-0.3 s, so ~40 requests are in flight.
           The ideal leaves out the last answer's latency, so this case cannot beat ~1 + 0.3 s / duration
           (1.015 at 20 s); keep --seconds >= 10 for its ratio to mean anything.

Targets: ratio <= 1.05 and 429s <= 1% of requests, in every case.

The mock runs in this process (its record is read directly); at these rates it costs little CPU.

Run: .venv/bin/python benchmarks/pacing.py [--seconds 20] [--cases rpm,tpm,latency]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from _common import CHAT_MODEL, Figure, chat_request, embedding_request, format_table, without_metadata

from rate_limited_processor import Limits, Processor, Settings, TokenEstimator
from rate_limited_processor.mock_server import MockConfig, MockServer
from rate_limited_processor.providers.endpoints import Endpoint, endpoint_from_url

TARGET_RATIO = 1.05
TARGET_429_PERCENT = 1.0


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    endpoint: str
    make_request: Callable[[int], dict[str, Any]]
    limits: Limits
    #: The mock's answer time for a 200: latency plus up to latency_jitter more, uniformly drawn.
    latency: float = 0.0
    latency_jitter: float = 0.0


CASES = {
    "rpm": Case("rpm", "chat/completions", chat_request, Limits(6_000, 2_000_000)),
    "tpm": Case("tpm", "embeddings", embedding_request, Limits(60_000, 150_000)),
    "latency": Case("latency", "chat/completions", chat_request, Limits(12_000, 4_000_000), latency=0.1, latency_jitter=0.2),
}


@dataclass(frozen=True, slots=True)
class Outcome:
    case: Case
    requests: int
    elapsed: float
    ideal: float
    tokens_estimated: int
    tokens_mock_200: int
    count_429: int
    succeeded: int

    @property
    def ratio(self) -> float:
        return self.elapsed / self.ideal

    @property
    def percent_429(self) -> float:
        return 100.0 * self.count_429 / self.requests

    @property
    def binding(self) -> str:
        by_requests = self.requests / (self.case.limits.requests_per_minute / 60)  # type: ignore[operator]
        return "RPM" if by_requests >= self.ideal else "TPM"


def requests_for(case: Case, seconds: float) -> list[dict[str, Any]]:
    """Enough requests that the ideal schedule lasts about `seconds`, whichever limit binds."""
    sample = [case.make_request(i) for i in range(200)]
    estimator = TokenEstimator()
    endpoint = endpoint_from_url(case.endpoint)
    mean_tokens = sum(estimator.estimate(endpoint, without_metadata(r)) for r in sample) / len(sample)
    per_second = min(
        case.limits.requests_per_minute / 60,  # type: ignore[operator]
        case.limits.tokens_per_minute / 60 / mean_tokens,  # type: ignore[operator]
    )
    return [case.make_request(i) for i in range(round(per_second * seconds))]


async def run_case(case: Case, seconds: float) -> Outcome:
    requests = requests_for(case, seconds)
    mock = MockConfig(
        requests_per_minute=case.limits.requests_per_minute,
        tokens_per_minute=case.limits.tokens_per_minute,
        burst_seconds=case.limits.burst_seconds,
        token_counting="tiktoken",
        latency=case.latency,
        latency_jitter=case.latency_jitter,
        model=CHAT_MODEL,  # the tokenizer it warms up on start is then one that ships offline
    )
    async with MockServer(mock) as server:
        settings = Settings(request_url=server.url(case.endpoint), limits=case.limits, request_timeout=30)
        processor = Processor(settings)
        tokens = succeeded = 0
        started = time.perf_counter()
        async for result in processor.process(requests):
            tokens += result.estimated_tokens
            succeeded += result.succeeded
        elapsed = time.perf_counter() - started
        record = server.record
        tokens_200 = sum(entry.tokens for entry in record if entry.outcome == 200)
        count_429 = record.count(429)
    rps = case.limits.requests_per_minute / 60  # type: ignore[operator]
    tps = case.limits.tokens_per_minute / 60  # type: ignore[operator]
    ideal = max(len(requests) / rps, tokens / tps)
    return Outcome(case, len(requests), elapsed, ideal, tokens, tokens_200, count_429, succeeded)


def figures(outcomes: Sequence[Outcome]) -> list[Figure]:
    result = []
    for o in outcomes:
        result.append(Figure(f"pacing {o.case.name}: time / ideal", o.ratio, "<=", TARGET_RATIO))
        result.append(Figure(f"pacing {o.case.name}: 429s % of requests", o.percent_429, "<=", TARGET_429_PERCENT, "%"))
    return result


def report(outcomes: Sequence[Outcome]) -> str:
    header = ["case", "binds", "N", "tokens", "mock 200 tok", "ideal s", "took s", "ratio", "429s", "429 %", "ok"]
    rows = [
        [
            o.case.name, o.binding, o.requests, o.tokens_estimated,
            "same" if o.tokens_mock_200 == o.tokens_estimated else o.tokens_mock_200,
            f"{o.ideal:.2f}", f"{o.elapsed:.2f}", f"{o.ratio:.3f}", o.count_429, f"{o.percent_429:.2f}",
            f"{o.succeeded}/{o.requests}",
        ]
        for o in outcomes
    ]
    return format_table(header, rows)


async def run(cases: Sequence[str], seconds: float) -> list[Outcome]:
    TokenEstimator().estimate(Endpoint.EMBEDDINGS, {"model": "gpt-4", "input": "warm up"})  # load tiktoken before timing
    outcomes = []
    for name in cases:
        outcome = await run_case(CASES[name], seconds)
        print(f"  {name}: {outcome.elapsed:.1f} s, ratio {outcome.ratio:.3f}, 429s {outcome.count_429}", file=sys.stderr, flush=True)
        outcomes.append(outcome)
    return outcomes


def main(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="ideal duration of each case (default: 20)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    args = parser.parse_args(argv)
    logging.getLogger("rate_limited_processor").setLevel(logging.ERROR)  # retries are counted, not logged
    outcomes = asyncio.run(run(args.cases.split(","), args.seconds))
    print("\nPacing: time to finish / ideal from the bucket math (target <= 1.05), 429s (target <= 1%)")
    print(report(outcomes))
    return figures(outcomes)


if __name__ == "__main__":
    main()
