"""What a flag's value may be: argparse `type=` functions, each refusing a bad value in one line."""

from __future__ import annotations

import argparse
import logging

from ..base.durations import parse_duration
from ..providers.registry import LARGEST_BATCH_MAX_LINES

_SECONDS_PER_DAY = 86_400.0


def _batch_lines(text: str) -> int:
    value = _positive_int(text)
    if value > LARGEST_BATCH_MAX_LINES:  # the URL's own API's most is checked once the URL is known
        raise argparse.ArgumentTypeError(f"no batch API takes more than {LARGEST_BATCH_MAX_LINES:,} requests in a batch, got {text!r}")
    return value


def _deadline(text: str) -> float:
    """A deadline from now: "45m", "6h", "1h30m", "2d" (days, which Go durations lack), or bare seconds."""
    days, d, rest = text.strip().partition("d")
    seconds = parse_duration(days) if d and not rest else parse_duration(text)
    if seconds is not None and d and not rest:
        seconds *= _SECONDS_PER_DAY
    if seconds is None or not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a duration such as 45m, 6h or 2d, got {text!r}")
    return seconds


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port from 0 to 65535 is needed, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _limit(text: str) -> float | None:
    """A per-minute limit, or None for "auto" (argparse applies this to the "auto" default too)."""
    return None if text.strip().lower() == "auto" else _positive_float(text)


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {text!r}")
    return value


def _logging_level(text: str) -> int:
    if text.lstrip("-").isdigit():
        return int(text)
    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(f"unknown logging level {text!r}")
    return level


def _non_negative_float(text: str) -> float:
    try:
        if float(text) == 0:
            return 0.0
    except ValueError:
        pass
    return _positive_float(text)
