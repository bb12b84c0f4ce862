"""Retry timing: how many attempts a request gets, and how long it waits between them.

Usage::

    decision = classify(HTTPOutcome(status=429, headers={"retry-after": "2"}, body=error_json))
    if decision.verdict is Verdict.RETRY and attempt < policy.max_attempts:
        if (pause := policy.pause_for(decision)) is not None:
            ...                                  # every sender pauses `pause` seconds
        wait = policy.retry_delay(decision, attempt)   # this request waits, then tries again

`RetryPolicy` is the timing as a value: backoff with jitter, the server's hint, and the pause after a rate
limit. The verdict on an attempt is `classification.classify`'s, the server's hint `wait_hints`', and a
duration's reading `base.durations`'; their names are re-exported here, where earlier releases had them.

Pure: no I/O, no asyncio, no clock.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from ..base.durations import parse_duration
from .classification import (
    MAX_BODY_SNIPPET_CHARS,
    MAX_REASON_CHARS,
    STOP_RUN_ERROR_CODES,
    Decision,
    HTTPOutcome,
    Verdict,
    answer_problem,
    classify,
)
from .wait_hints import retry_after_seconds

__all__ = [
    "Verdict",
    "HTTPOutcome",
    "Decision",
    "RetryPolicy",
    "classify",
    "answer_problem",
    "parse_duration",
    "retry_after_seconds",
    "MAX_ATTEMPTS",
    "INITIAL_RETRY_DELAY",
    "MAX_RETRY_DELAY",
    "RATE_LIMIT_COOLDOWN",
    "MAX_RATE_LIMITED_WAIT",
    "MAX_SERVER_WAIT",
    "STOP_RUN_ERROR_CODES",
    "MAX_REASON_CHARS",
    "MAX_BODY_SNIPPET_CHARS",
]

#: Attempts per request in all, first try included (the cookbook's default).
MAX_ATTEMPTS = 5
#: Backoff before the second attempt, in seconds; it doubles with each failure.
INITIAL_RETRY_DELAY = 1.0
#: Backoff never grows past this many seconds.
MAX_RETRY_DELAY = 60.0
#: The longest pause of every sender after rate-limit 429s that say nothing about how long (seconds). The pause
#: itself starts at about a round trip and doubles with each round of 429s in a row (`rate_control`); the
#: cookbook paused a fixed 15 s every time, which cost a gateway most of its capacity.
RATE_LIMIT_COOLDOWN = 15.0
#: How long one request may wait on rate limits in all before the run stops for a rerun (seconds): a 429 costs
#: no attempt, only time, and this bounds the time.
MAX_RATE_LIMITED_WAIT = 900.0
#: The longest server-requested wait honoured (seconds). A longer one (Azure's "retry after 86400
#: seconds" for a daily quota) stops the run instead: a rerun later resumes, and nothing sits idle for a day.
MAX_SERVER_WAIT = 900.0
#: Jittered backoff is the exponential delay times a factor in [JITTER_FLOOR, 1).
JITTER_FLOOR = 0.5

@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many attempts a request gets and how long it waits between them.

    Jitter: `backoff` multiplies the exponential delay by a factor drawn uniformly from [0.5, 1.0), so
    requests that failed together spread out over half the delay instead of retrying in lockstep, yet never
    retry sooner than half the backoff.
    """

    #: Attempts in all, first try included; at least 1.
    max_attempts: int = MAX_ATTEMPTS
    #: Backoff base (seconds): the delay after the first failure, before jitter.
    initial_delay: float = INITIAL_RETRY_DELAY
    #: Backoff cap (seconds).
    max_delay: float = MAX_RETRY_DELAY
    #: The longest pause after rate-limit 429s that gave no hint (seconds).
    rate_limit_cooldown: float = RATE_LIMIT_COOLDOWN
    #: The longest server-requested wait honoured; see `waits_too_long`.
    max_server_wait: float = MAX_SERVER_WAIT
    #: How long one request may wait on rate limits in all (seconds) before the run stops for a rerun.
    max_rate_limited_wait: float = MAX_RATE_LIMITED_WAIT
    #: How long the run probes a server that has stopped answering everyone (an outage) before it stops for a rerun.
    max_outage: float = MAX_RATE_LIMITED_WAIT

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        for name in ("initial_delay", "max_delay", "rate_limit_cooldown", "max_server_wait", "max_rate_limited_wait", "max_outage"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")

    def backoff(self, attempt: int, *, random: Callable[[], float] = random.random) -> float:
        """Seconds to wait before attempt `attempt + 1`, after `attempt` (>= 1) failed attempts:
        min(max_delay, initial_delay * 2**(attempt-1)), times a jitter factor in [0.5, 1.0)."""
        if attempt < 1:
            raise ValueError(f"attempt counts failed attempts and must be at least 1, got {attempt}")
        # The exponent is capped so a silly attempt number cannot overflow a float.
        delay = min(self.max_delay, self.initial_delay * 2.0 ** min(attempt - 1, 64))
        return delay * (JITTER_FLOOR + (1.0 - JITTER_FLOOR) * random())

    def retry_delay(self, decision: Decision, attempt: int, *, random: Callable[[], float] = random.random) -> float:
        """Seconds this request waits before its next attempt, after `attempt` failed attempts: the server's
        hint as given (never shortened), else exponential backoff. (A rate limit waits out the pause instead:
        see `pause_for`.)"""
        if decision.retry_after is not None:
            return max(0.0, decision.retry_after)
        return self.backoff(attempt, random=random)

    def waits_too_long(self, decision: Decision) -> bool:
        """The server asks for a wait longer than `max_server_wait`: stop the run rather than sit idle."""
        return decision.retry_after is not None and decision.retry_after > self.max_server_wait

    def pause_for(self, decision: Decision, hintless: float) -> float | None:
        """Seconds every sender pauses after this decision: a rate limit's hint, else `hintless` (about a
        round trip, from the rate controller) up to `rate_limit_cooldown`. None when it is not a rate limit."""
        if not decision.rate_limited:
            return None
        if decision.retry_after is not None:
            return max(0.0, decision.retry_after)
        return min(self.rate_limit_cooldown, max(0.0, hintless))
