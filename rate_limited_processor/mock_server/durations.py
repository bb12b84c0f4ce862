"""Durations written the way OpenAI writes them: Go's `time.Duration` strings ("644ms", "1.574s", "7m12s").

OpenAI's API is written in Go, so its `x-ratelimit-reset-*` headers and its "Please try again in …" messages
use Go's format. The mock writes the same strings so that clients parse exactly what they will meet.
"""

from __future__ import annotations

import math

__all__ = ["go_duration", "ceil_milliseconds"]

_MS_PER_SECOND = 1_000
_MS_PER_MINUTE = 60 * _MS_PER_SECOND
_MS_PER_HOUR = 60 * _MS_PER_MINUTE
#: Float arithmetic leaves 0.12 s as 120.00000000001 ms; without this slack it would round up to 121 ms.
_ROUNDING_SLACK_MS = 1e-6


def ceil_milliseconds(seconds: float) -> int:
    """Whole milliseconds, rounded up, so a wait the mock reports is never shorter than the real one."""
    if seconds <= 0:
        return 0
    return max(1, math.ceil(seconds * _MS_PER_SECOND - _ROUNDING_SLACK_MS))


def go_duration(seconds: float) -> str:
    """`seconds` as Go prints a duration, to millisecond precision (rounded up).

    >>> go_duration(0.644), go_duration(1.574), go_duration(432), go_duration(0)
    ('644ms', '1.574s', '7m12s', '0s')
    """
    total_ms = ceil_milliseconds(seconds)
    if total_ms == 0:
        return "0s"
    if total_ms < _MS_PER_SECOND:
        return f"{total_ms}ms"
    hours, rest = divmod(total_ms, _MS_PER_HOUR)
    minutes, rest = divmod(rest, _MS_PER_MINUTE)
    whole_seconds, ms = divmod(rest, _MS_PER_SECOND)
    second_part = f"{whole_seconds}.{ms:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{second_part}"
    if minutes:
        return f"{minutes}m{second_part}"
    return second_part
