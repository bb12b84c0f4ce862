"""The benchmark report's memory: flat in the number of requests (HdrHistograms, a row per second).

Feeds `RunReport` synthetic streamed results (5 tokens each, one run-second per 1,000 requests) and prints
the process's peak RSS after the first checkpoint and after the last, and the growth between them. The
results are made one at a time and dropped, as the file job does, so what grows is the report alone: a
row of the timeline per second of the run (about 100 bytes) and nothing per request.

Run: .venv/bin/python benchmarks/report_memory.py [--requests 10000000] [--checkpoint 100000]
(10 million takes about 8 minutes on a 2-core machine; the default million, about 50 s).
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Sequence

from rate_limited_processor.base.models import AttemptTiming, RequestResult, RequestTimings, ResultKind
from rate_limited_processor.core.limiter import Limits
from rate_limited_processor.core.stats import RunStats
from rate_limited_processor.ui.report import RunReport


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def result(i: int) -> RequestResult:
    sent = i / 1_000
    ttft = 0.05 + (i % 97) / 1_000
    tokens = tuple(sent + ttft + k * 0.01 for k in range(5))
    timings = RequestTimings(sent, sent, tokens[-1], first_byte=sent, tokens=tokens, attempts=(AttemptTiming(sent, tokens[-1], 200),))
    return RequestResult(i, None, None, {"usage": {"completion_tokens": 5}}, (), 1, ResultKind.SUCCEEDED, timings=timings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--checkpoint", type=int, default=100_000)
    args = parser.parse_args(argv)
    report = RunReport(streamed=True)
    report.begin(0.0)
    started = time.perf_counter()
    at_checkpoint = 0.0
    for i in range(args.requests):
        report.add(result(i))
        if i + 1 == args.checkpoint:
            at_checkpoint = peak_rss_mb()
    built = report.build(RunStats(Limits(None, None), started_at=0.0, clock=lambda: args.requests / 1_000))
    at_end = peak_rss_mb()
    seconds = time.perf_counter() - started
    print(f"{args.requests:,} results in {seconds:.0f}s ({seconds / args.requests * 1e6:.1f} µs each); "
          f"latency p50 {built['latency_s']['p50']:.4f}s, {built['itl_s']['count']:,} inter-token gaps, {len(built['timeline']):,} timeline rows")
    print(f"peak RSS: {at_checkpoint:.1f} MB after {args.checkpoint:,}, {at_end:.1f} MB after {args.requests:,}: +{at_end - at_checkpoint:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
