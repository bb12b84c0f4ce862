"""What one answer's rate-limit headers say, as every provider's parser reports it.

Each provider module reads its own headers into a `RateLimitReport` (`openai.parse_rate_limits`,
`anthropic.parse_rate_limits`); the tuner (`core.learned_limits`) and `--show_limits` (`jobs.probe`) both read
the report, never the headers. The helpers here are the parts the parsers share. Pure: no clock read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "RateLimitReport",
    "NO_REPORT",
    "MIN_STATED_REQUESTS_PER_MINUTE",
    "MIN_STATED_TOKENS_PER_MINUTE",
    "StatedLimits",
    "exhausted",
    "positive_number",
    "count_left",
]

#: Stated limits below these are no account's limits (a garbled header, or a server that lies): one
#: request per minute, a hundred tokens per minute. Adopting `x-ratelimit-limit-requests: 0.001` would
#: send one request every 17 hours, in silence; such a limit is ignored, with one warning.
MIN_STATED_REQUESTS_PER_MINUTE = 1.0
MIN_STATED_TOKENS_PER_MINUTE = 100.0


@dataclass(frozen=True, slots=True)
class RateLimitReport:
    """The server's view, from one response's headers; None where a header was absent."""

    limit_requests: float | None = None
    limit_tokens: float | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None
    #: The output-token limit (OTPM), where the API has one apart.
    limit_output_tokens: float | None = None
    #: How finely the resets are given, in seconds: Go durations to the millisecond, bare seconds or RFC 3339
    #: times to the second.
    reset_resolution: float = 0.001
    #: Limit headers that were present but ignored, as ("header", "value"): not a number, or below any real limit.
    ignored: tuple[tuple[str, str], ...] = ()
    #: Limit headers whose value says the server does not know the limit (Azure's -1 and 0): no limit, no warning.
    unknown: tuple[str, ...] = ()
    #: A `remaining` header says 0 for a limit the same answer states: the server's bucket is empty at that limit,
    #: so a 429 that carries it is the bucket working, not a sign of a lower limit than stated.
    exhausted: bool = False
    #: Output tokens left now: what the server's output bucket holds at least.
    remaining_output_tokens: float | None = None
    #: Requests and tokens left now (what `--show_limits` shows; the tuner reads resets, not these).
    remaining_requests: float | None = None
    remaining_tokens: float | None = None

    @property
    def empty(self) -> bool:
        return (
            self.limit_requests is None and self.limit_tokens is None and self.limit_output_tokens is None
            and self.reset_requests is None and self.reset_tokens is None
        )


#: What an answer without a rate-limit header reports.
NO_REPORT = RateLimitReport()


class StatedLimits:
    """Reads stated limits off one answer's headers, each checked against its floor; the ignored ones are kept."""

    __slots__ = ("headers", "floors", "unknown", "ignored", "unstated")

    def __init__(self, headers: Mapping[str, str], floors: Mapping[str, float], unknown: frozenset[float] = frozenset()) -> None:
        """`unknown`: values that are the server's way of saying it does not know the limit (Azure's -1 and 0): read
        as no header at all, without a warning, and listed in `unstated`."""
        self.headers = headers
        self.floors = floors
        self.unknown = unknown
        self.ignored: list[tuple[str, str]] = []
        self.unstated: list[str] = []

    def __call__(self, name: str) -> float | None:
        text = self.headers.get(name)
        value = positive_number(text)
        if text is not None and self.unknown and _number(text) in self.unknown:
            self.unstated.append(name)
            return None
        if text is not None and (value is None or value < self.floors[name]):
            self.ignored.append((name, text))
            return None
        return value


def exhausted(headers: Mapping[str, str], pairs: tuple[tuple[str, str], ...]) -> bool:
    """Some limit is stated and its `remaining` is 0; `pairs` are (remaining, limit) header names."""
    for remaining, limit in pairs:
        text = headers.get(remaining)
        if text is not None and text.strip() == "0" and positive_number(headers.get(limit)) is not None:
            return True
    return False


def positive_number(text: str | None) -> float | None:
    value = _number(text)
    return value if value is not None and value > 0 else None


def _number(text: str | None) -> float | None:
    """A finite number, or None."""
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def count_left(text: str | None) -> float | None:
    """A `remaining` header's count: a finite number, 0 included; None otherwise."""
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
