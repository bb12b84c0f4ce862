"""The benchmark report of a run (`--report`): latency, time to first token and inter-token latency as
percentiles, throughput, errors by status, and a per-second timeline.

Usage::

    report = RunReport(streamed=True)
    report.begin(processor.stats.started_at)        # the timeline's second 0
    for result in results:
        report.add(result)                           # reads result.timings; keeps no result
    record = report.build(processor.stats)           # a JSON-ready dict (`render_html` draws it)

Percentiles come from HdrHistograms (the `hdrhistogram` package, the structure wrk2, Gatling and
Cassandra's stress tool record latencies in): every value is counted in a bucket no wider than 1/1000 of
it, so a percentile is the exact nearest-rank value of all requests or at most 0.1% above it (and exact to
the microsecond below 2 ms). Its memory is fixed by the range (1 µs to a day: about 220 KB a histogram),
not by the number of requests, so 10 million requests cost what 10 do. DDSketch promises the same
relative error but counts no exact maximum and is no better known; t-digest bounds no error at all. Means
and maxima are exact (running sums). The timeline has one row per second of the run.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

from hdrh.histogram import HdrHistogram

from ..base.models import RequestResult, ResultKind
from ..core.stats import RunStats

__all__ = ["RunReport", "Distribution", "PERCENTILES", "SIGNIFICANT_DIGITS", "PERCENTILE_ERROR"]

#: The percentiles reported for every distribution.
PERCENTILES = (50.0, 90.0, 95.0, 99.0)
#: HdrHistogram's precision: buckets no wider than 1/10**SIGNIFICANT_DIGITS of their values.
SIGNIFICANT_DIGITS = 3
#: What the report says of its percentiles.
PERCENTILE_ERROR = (
    "nearest-rank percentiles of all requests, from HdrHistograms with 3 significant digits: each is the exact value or at most "
    "0.1% above it (exact to 1 microsecond below 2 ms); means and maxima are exact"
)
#: Values are counted in microseconds, from 1 µs up to a day (longer ones count as a day).
_MICROSECONDS = 1_000_000
_HIGHEST = 86_400 * _MICROSECONDS
#: Bars in each distribution's histogram (for the HTML report's charts).
HISTOGRAM_BINS = 40


class Distribution:
    """One measure (latency, time to first token, ...) over every request: fixed memory, whatever the count."""

    __slots__ = ("_histogram", "count", "_sum", "_max", "_min")

    def __init__(self) -> None:
        self._histogram = HdrHistogram(1, _HIGHEST, SIGNIFICANT_DIGITS)
        self.count = 0
        self._sum = 0.0
        self._max = -math.inf
        self._min = math.inf

    def record(self, seconds: float) -> None:
        seconds = max(0.0, seconds)  # a clock cannot run backwards; rounding can
        self.count += 1
        self._sum += seconds
        self._max = max(self._max, seconds)
        self._min = min(self._min, seconds)
        self._histogram.record_value(min(round(seconds * _MICROSECONDS), _HIGHEST))

    def percentile(self, percent: float) -> float:
        """The nearest-rank percentile in seconds (at most 0.1% above the exact one)."""
        return float(self._histogram.get_value_at_percentile(percent)) / _MICROSECONDS

    def summary(self) -> dict[str, Any]:
        """count, mean, min, max and the percentiles, in seconds; a histogram for the charts."""
        if not self.count:
            return {"count": 0}
        values = self._histogram.get_percentile_to_value_dict([*PERCENTILES, 99.9])  # one pass for them all
        summary: dict[str, Any] = {"count": self.count, "mean": self._sum / self.count}
        for percent in PERCENTILES:
            summary[f"p{percent:g}"] = min(values[percent] / _MICROSECONDS, self._max)
        summary["min"], summary["max"] = self._min, self._max
        summary["histogram"] = self.histogram(high=min(values[99.9] / _MICROSECONDS, self._max))
        return summary

    def histogram(self, *, high: float, bins: int = HISTOGRAM_BINS) -> dict[str, list[float] | list[int]]:
        """Counts in `bins` equal bars from the minimum to `high` (the 99.9th percentile); the last bar holds the rest."""
        low = self._min
        high = max(high, low)
        width = (high - low) / bins if high > low else 1e-6
        counts = [0] * bins
        histogram = self._histogram
        first = histogram.get_counts_array_index(min(round(low * _MICROSECONDS), _HIGHEST))
        for index in range(first, histogram.get_counts_array_index(histogram.max_value) + 1):
            count = histogram.get_count_at_index(index)
            if count:
                value = histogram.get_value_from_index(index) / _MICROSECONDS
                counts[min(bins - 1, max(0, int((value - low) / width)))] += count
        return {"edges_s": [low + width * i for i in range(bins + 1)], "counts": counts}


class RunReport:
    """Folds the results of one run into the report as they come: memory flat in the number of requests."""

    __slots__ = ("streamed", "settings", "origin", "_kinds", "_latency", "_from_scheduled", "_ttft", "_itl", "_tpot",
                 "_output_tokens", "_errors", "_attempts", "_rate_limited", "_sent", "_answered", "_finished", "_limited")

    def __init__(self, *, streamed: bool = False, settings: Mapping[str, Any] | None = None) -> None:
        #: Time to first token and inter-token latency are reported only for streamed runs.
        self.streamed = streamed
        #: What was measured, for the reader (URL, stream, arrivals, ...): put in the report as it is.
        self.settings = dict(settings or {})
        #: The run's start on its clock: second 0 of the timeline.
        self.origin: float | None = None
        self._kinds: Counter[ResultKind] = Counter()
        self._latency, self._from_scheduled = Distribution(), Distribution()
        self._ttft, self._itl, self._tpot = Distribution(), Distribution(), Distribution()
        self._output_tokens = 0
        self._errors: Counter[str] = Counter()
        self._attempts = self._rate_limited = 0
        # Per second of the run: attempts sent, attempts ended, requests finished, rate-limit 429s.
        self._sent: list[int] = []
        self._answered: list[int] = []
        self._finished: list[int] = []
        self._limited: list[int] = []

    def begin(self, origin: float) -> None:
        """The run started at `origin` (its clock): the timeline counts seconds from there."""
        self.origin = origin

    def add(self, result: RequestResult) -> None:
        """Count one result (a success, a failure, an invalid line)."""
        self._kinds[result.kind] += 1
        timings = result.timings
        if timings is None:
            return
        for number, attempt in enumerate(timings.attempts, start=1):
            self._attempts += 1
            self._rate_limited += attempt.rate_limited
            self._bump(self._sent, attempt.sent)
            self._bump(self._answered, attempt.ended)
            if attempt.rate_limited:
                self._bump(self._limited, attempt.ended)
            if not (result.kind is ResultKind.SUCCEEDED and number == len(timings.attempts)):
                self._errors[str(attempt.outcome)] += 1
        self._bump(self._finished, timings.finished)
        if result.kind is not ResultKind.SUCCEEDED:
            return
        self._latency.record(timings.latency)
        self._from_scheduled.record(timings.latency_from_scheduled)
        output_tokens = _output_tokens(result.response)
        self._output_tokens += output_tokens
        ttft = timings.time_to_first_token
        if ttft is not None:
            self._ttft.record(ttft)
            for gap in timings.inter_token_gaps():
                self._itl.record(gap)
            if output_tokens > 1:
                self._tpot.record((timings.finished - timings.tokens[0]) / (output_tokens - 1))

    def _bump(self, counts: list[int], at: float) -> None:
        second = max(0, int(at - (self.origin if self.origin is not None else at)))
        if second >= len(counts):
            counts.extend([0] * (second + 1 - len(counts)))
        counts[second] += 1

    def build(self, stats: RunStats) -> dict[str, Any]:
        """The report as JSON-ready data: the fields `--report` writes and `render_html` draws."""
        duration = stats.elapsed
        succeeded = self._kinds[ResultKind.SUCCEEDED]
        record: dict[str, Any] = {
            "requests": sum(self._kinds.values()),
            "succeeded": succeeded,
            "failed": self._kinds[ResultKind.FAILED],
            "invalid": self._kinds[ResultKind.INVALID],
            "attempts": self._attempts,
            "duration_s": duration,
            "throughput": {"requests_per_s": succeeded / duration, "output_tokens_per_s": self._output_tokens / duration},
            "output_tokens": self._output_tokens,
            "latency_s": self._latency.summary(),
            "latency_from_scheduled_s": self._from_scheduled.summary(),
        }
        if self.streamed:
            record["ttft_s"] = self._ttft.summary()
            record["itl_s"] = self._itl.summary()
            record["tpot_s"] = self._tpot.summary()
        record["rate_limit_429s"] = self._rate_limited
        record["errors_by_status"] = dict(sorted(self._errors.items()))
        record["timeline"] = self._timeline()
        record["percentiles"] = PERCENTILE_ERROR
        record["settings"] = self.settings
        return record

    def _timeline(self) -> list[dict[str, int]]:
        """One row per second: attempts sent, requests finished, attempts in flight at its end, 429s."""
        seconds = max(len(self._sent), len(self._answered), len(self._finished), len(self._limited))
        rows = []
        in_flight = 0
        for second in range(seconds):
            sent, answered = _at(self._sent, second), _at(self._answered, second)
            in_flight += sent - answered
            rows.append({"second": second, "sent": sent, "finished": _at(self._finished, second), "in_flight": in_flight,
                         "rate_limit_429s": _at(self._limited, second)})
        return rows


def _at(counts: list[int], index: int) -> int:
    return counts[index] if index < len(counts) else 0


def _output_tokens(response: Any) -> int:
    """Completion tokens as the answer's `usage` reports them (chat, completions, Responses)."""
    usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return 0
    tokens = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 0 else 0
