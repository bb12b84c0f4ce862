"""The server side of rate limiting: admit a request now or reject it with how long to wait, as OpenAI does.

Usage::

    gate = RateLimitGate(Limits(requests_per_minute=500, tokens_per_minute=200_000), now=clock())
    rejection = gate.admit(tokens=1_200, now=clock())   # None: admitted and charged
    headers = gate.headers(now=clock())                   # x-ratelimit-* for the answer

The buckets are the project's own `TokenBucket`s, sized as the client sizes its own (rate = limit / 60 per
second, capacity = rate x burst_seconds, at least 1), so the mock enforces exactly the arithmetic the client
paces itself by. Two differences, both OpenAI's: the server's buckets start full (the client's start empty),
and the server never waits: a request that does not fit is rejected and charged nothing, and its 429 says
how long until it would fit.

Header semantics: `limit` is the per-minute limit; `remaining` is what could be sent right now (the whole
units in the bucket, which holds only `burst_seconds` of the limit); `reset` is the time until the bucket is
full again. Pure: time is passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.limiter import OUTPUT_BURST_SECONDS, Limits, TokenBucket
from .durations import go_duration
from .errors import LimitName, format_limit

__all__ = ["RateLimitGate", "Rejection", "LimitState"]

#: Waits shorter than this count as "now": float refill arithmetic never lands exactly on zero.
_EPSILON = 1e-9
SECONDS_PER_MINUTE = 60.0


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request was turned away, in the figures OpenAI's 429 message quotes."""

    #: Which limit binds: "requests" (RPM), "tokens" (TPM; Anthropic's input tokens) or "output_tokens".
    limit_name: LimitName
    #: The per-minute limit.
    limit: float
    #: The limit minus what could be sent now, as OpenAI words it ("Used 500").
    used: int
    #: What this request asked for: 1 request, or its tokens.
    requested: int
    #: Seconds until the request would be admitted.
    wait: float


@dataclass(frozen=True, slots=True)
class _Limit:
    """One enforced limit: its name, its per-minute figure, and the bucket enforcing it."""

    name: LimitName
    per_minute: float
    bucket: TokenBucket

    def amount(self, tokens: int, output_tokens: int = 0) -> int:
        """What one request of `tokens` (reserving `output_tokens`) costs against this limit."""
        return 1 if self.name == "requests" else output_tokens if self.name == "output_tokens" else tokens

    def remaining(self) -> int:
        """Whole units that could be taken now (a bucket in debt has none)."""
        return max(0, math.floor(self.bucket.level + _EPSILON))


def _limit(name: LimitName, per_minute: float | None, burst_seconds: float, now: float) -> list[_Limit]:
    """The limit as a full bucket, or nothing when it is not set."""
    if per_minute is None:
        return []
    rate = per_minute / SECONDS_PER_MINUTE
    # At least one whole unit, so a 30 RPM limit still admits a request.
    return [_Limit(name, per_minute, TokenBucket(rate, max(rate * burst_seconds, 1.0), now=now))]


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit as an answer's headers state it."""

    name: LimitName
    per_minute: float
    #: Whole units that could be taken now.
    remaining: int
    #: Seconds until the bucket is full again.
    until_full: float


class RateLimitGate:
    """RPM and TPM buckets (and Anthropic's output-token one) that admit-and-charge or reject-and-charge-nothing.

    The output-token bucket holds a minute, as Anthropic's "continuously replenished up to your maximum
    limit" does: a request reserves its whole max_tokens there, and what its answer did not use comes back
    (`refund`) when it ends."""

    __slots__ = ("limits", "_enforced")

    limits: Limits
    #: The limits that are set, requests first.
    _enforced: tuple[_Limit, ...]

    def __init__(self, limits: Limits, *, now: float, output_burst_seconds: float | None = None) -> None:
        """`output_burst_seconds`: the output-token bucket's capacity (default a minute, see the class docstring)."""
        self.limits = limits
        output_burst = output_burst_seconds if output_burst_seconds is not None else max(limits.burst_seconds, OUTPUT_BURST_SECONDS)
        self._enforced = (
            *_limit("requests", limits.requests_per_minute, limits.burst_seconds, now),
            *_limit("tokens", limits.tokens_per_minute, limits.burst_seconds, now),
            *_limit("output_tokens", limits.output_tokens_per_minute, output_burst, now),
        )

    def __repr__(self) -> str:
        buckets = ", ".join(f"{limit.name}={limit.bucket!r}" for limit in self._enforced)
        return f"RateLimitGate({buckets})"

    @property
    def counts_tokens(self) -> bool:
        """Only a TPM limit needs each request's tokens counted."""
        return self.limits.tokens_per_minute is not None

    def too_large(self, tokens: int) -> bool:
        """A request over the whole per-minute token limit can never be admitted."""
        limit = self.limits.tokens_per_minute
        return limit is not None and tokens > limit

    def admit(self, tokens: int, now: float, output_tokens: int = 0) -> Rejection | None:
        """Charge one request of `tokens` (and `output_tokens` reserved) and return None, or charge nothing
        and say why not."""
        if not self._enforced:
            return None
        waits = [(limit.bucket.wait_time(limit.amount(tokens, output_tokens), now), limit) for limit in self._enforced]
        # The longest wait binds; on a tie the request limit is named, as it comes first.
        wait, binding = max(waits, key=lambda pair: pair[0])
        if wait <= _EPSILON:
            for limit in self._enforced:
                limit.bucket.take(limit.amount(tokens, output_tokens), now)
            return None
        used = max(0, math.ceil(binding.per_minute - binding.remaining()))
        return Rejection(binding.name, binding.per_minute, used, binding.amount(tokens, output_tokens), wait)

    def refund(self, output_tokens: int, now: float) -> None:
        """Reserved output tokens an answer did not use go back (up to the bucket's capacity)."""
        for limit in self._enforced:
            if limit.name == "output_tokens" and output_tokens > 0:
                limit.bucket.take(-output_tokens, now)
                limit.bucket.level = min(limit.bucket.level, limit.bucket.capacity)

    def state(self, now: float) -> list[LimitState]:
        """Each limit that is set, as it stands at `now`."""
        states = []
        for limit in self._enforced:
            bucket = limit.bucket
            bucket.refill(now)
            until_full = max(0.0, bucket.capacity - bucket.level) / bucket.rate
            states.append(LimitState(limit.name, limit.per_minute, limit.remaining(), until_full))
        return states

    def headers(self, now: float) -> dict[str, str]:
        """The `x-ratelimit-*` headers for an answer given at `now`, for each limit that is set."""
        headers: dict[str, str] = {}
        for limit in self.state(now):
            headers[f"x-ratelimit-limit-{limit.name}"] = format_limit(limit.per_minute)
            headers[f"x-ratelimit-remaining-{limit.name}"] = str(limit.remaining)
            headers[f"x-ratelimit-reset-{limit.name}"] = go_duration(limit.until_full)
        return headers
