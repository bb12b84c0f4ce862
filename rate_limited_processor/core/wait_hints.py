"""The wait a server asks for: its `retry-after-ms` or `retry-after` header, else its error body's own field
(Gemini's RetryInfo), else the words of its message.

Pure: the one clock read (for an HTTP-date `retry-after`) can be replaced by passing `now`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..base.durations import http_date, non_negative_number, parse_duration
from ..providers.registry import ERRORS, wait_in_body

__all__ = ["retry_after_seconds"]

#: A wait in a provider's words: "Please try again in 1.574s", "Please retry after 6 seconds", "Try again in 20 seconds".
_MESSAGE_HINT_RE = ERRORS.wait_pattern()


def retry_after_seconds(headers: Mapping[str, str], message: str = "", *, now: float | None = None, body: Any = None) -> float | None:
    """The wait the server asked for, in seconds, from the first source that gives a sane value:

    1. `retry-after-ms` header (milliseconds);
    2. `retry-after` header as seconds, else as an HTTP date (relative to `now`, default `time.time()`;
       a date in the past means 0);
    3. the error `body`'s own field for it, where a provider has one (Gemini's `RetryInfo.retryDelay`);
    4. the message: "Please try again in 1.574s" / "in 7m12s" (Go durations), "Please retry after
       6 seconds" / "Try again in 20 seconds" (Azure).

    A source with a nonsense value (negative, NaN, infinite, garbage) is skipped. None when none applies.
    """
    ms = non_negative_number(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    retry_after = headers.get("retry-after")
    seconds = non_negative_number(retry_after)
    if seconds is not None:
        return seconds
    at = http_date(retry_after)
    if at is not None:
        return max(0.0, at - (time.time() if now is None else now))
    if body is not None:
        seconds = wait_in_body(body)
        if seconds is not None:
            return seconds
    return _message_hint(message)


def _message_hint(message: str) -> float | None:
    for match in _MESSAGE_HINT_RE.finditer(message or ""):
        seconds = parse_duration(match["duration"] or match["seconds"])
        if seconds is not None:
            return seconds
    return None
