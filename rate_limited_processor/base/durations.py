"""Durations and times as servers write them: Go durations ("1.574s", "6m0s"), bare seconds, HTTP dates and
RFC 3339 times. Pure parsing, no clock read: a time is turned into seconds from a `now` the caller gives."""

from __future__ import annotations

import email.utils
import math
import re
from datetime import UTC, datetime

__all__ = ["NUMBER", "UNIT", "parse_duration", "non_negative_number", "http_date", "seconds_until", "finite"]

_SECONDS_PER_UNIT = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 micro sign
    "μs": 1e-6,  # U+03BC greek mu; Go accepts both
    "ns": 1e-9,
}
#: A plain non-negative decimal number, as a regular expression.
NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
#: A Go duration's unit; longer units first, so "ms" is never read as "m" followed by a stray "s".
UNIT = r"(?:ns|us|µs|μs|ms|s|m|h)"
_NUMBER_RE = re.compile(NUMBER)
_GO_DURATION_RE = re.compile(rf"(?:{NUMBER}{UNIT})+")
_DURATION_PART_RE = re.compile(rf"({NUMBER})({UNIT})")


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration ("1.574s", "644ms", "7m12s", "1h2m3.5s", "12us"), or a bare number
    of seconds ("10", "0.5": Azure's form). None when unparseable, signed, or not finite.

    OpenAI writes `x-ratelimit-reset-*` headers and "try again in ..." messages this way.
    """
    text = text.strip()
    if _NUMBER_RE.fullmatch(text):
        return finite(float(text))
    if _GO_DURATION_RE.fullmatch(text):
        return finite(sum(float(n) * _SECONDS_PER_UNIT[unit] for n, unit in _DURATION_PART_RE.findall(text)))
    return None


def non_negative_number(text: str | None) -> float | None:
    """A plain non-negative finite number ("2", "1.5"), else None (so "-1", "nan", "inf", "1e3" are None)."""
    if not isinstance(text, str) or not _NUMBER_RE.fullmatch(text.strip()):
        return None
    return finite(float(text))


def http_date(text: str | None) -> float | None:
    """Epoch seconds of an HTTP date ("Wed, 21 Oct 2015 07:28:00 GMT"), else None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        at = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.timestamp()


def seconds_until(text: str | None, now: float) -> float | None:
    """Seconds from `now` (epoch seconds) to an RFC 3339 time ("2026-12-01T10:00:05Z"), 0 if past; None when unreadable."""
    if not text:
        return None
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max(0.0, at.timestamp() - now)


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
