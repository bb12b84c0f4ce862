"""Rate limiting: pure bucket math, the limiter interface, and the in-process limiter.

Usage::

    limiter = InProcessLimiter(Limits(requests_per_minute=500, tokens_per_minute=200_000))
    await limiter.acquire(tokens=1_200)   # returns when both buckets have room
    await limiter.pause(1.5)              # after a rate-limit 429: nobody sends for 1.5 s

`TokenBucket` and `RateBuckets` are plain arithmetic over a `now` you pass in; `InProcessLimiter` adds the
waiting, with an injectable clock and sleep so tests never sleep for real. A shared (Redis) limiter is
another implementation of `RateLimiter`.

Why buckets hold only a little, and start empty: OpenAI enforces its per-minute limits over short windows
(a 60,000 RPM limit may be enforced as 1,000 per second), so a bucket that starts with a whole minute of
capacity would send a burst the server rejects. Capacity is `rate x burst_seconds` (default one second),
and the buckets start empty, so sends are paced evenly from the first request. Starting empty also leaves
the server's own burst allowance untouched: it absorbs the jitter of the network (requests sent evenly
do not arrive evenly), which is what keeps 429s near zero when we run at exactly the limit.

Why a request bigger than the bucket still goes out: a token bucket of one second's capacity is smaller
than many single requests. Such a request waits until the bucket is full, then takes it into debt (the
level goes negative), so the long-run rate stays exact and nothing deadlocks.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..base.clock import Now, Sleep, loop_time

__all__ = ["DEFAULT_BURST_SECONDS", "UNLIMITED", "Admission", "Limits", "TokenBucket", "RateBuckets", "RateLimiter", "InProcessLimiter"]


#: Bucket capacity in seconds of the rate: one second, as OpenAI enforces short windows.
DEFAULT_BURST_SECONDS = 1.0
#: The most the output-token bucket is grown to, in seconds of its rate: Anthropic's fills "up to your maximum
#: limit", a minute. It starts at `burst_seconds`, as a server enforcing the limit over one second holds (one
#: `max_tokens` reservation may exceed that: it waits for a full bucket and takes it into debt until the answer
#: refunds what it did not use), and grows to what the server's `remaining` header shows it holds.
OUTPUT_BURST_SECONDS = 60.0
#: Waits shorter than this count as "now"; float refill arithmetic never lands exactly on zero.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-minute limits. `math.inf` means unlimited; None means not given (learned from the API
    where the run learns limits, otherwise unlimited, as a bucket without a rate)."""

    requests_per_minute: float | None
    #: Tokens per request as the API counts them at send time: OpenAI's prompt + completion budget, or
    #: Anthropic's input tokens (its ITPM).
    tokens_per_minute: float | None
    #: Bucket capacity, in seconds of the rate: how large a burst may be.
    burst_seconds: float = DEFAULT_BURST_SECONDS
    #: Output tokens per minute (Anthropic's OTPM): reserved at `max_tokens` when sent, refunded to what the
    #: answer used. None: no such limit (OpenAI counts the completion budget in `tokens_per_minute`).
    output_tokens_per_minute: float | None = None
    #: The output-token bucket's capacity, in seconds of its rate. None: `burst_seconds`.
    output_burst_seconds: float | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "output_tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.burst_seconds <= 0:
            raise ValueError(f"burst_seconds must be positive, got {self.burst_seconds}")
        if self.output_burst_seconds is not None and self.output_burst_seconds <= 0:
            raise ValueError(f"output_burst_seconds must be positive, got {self.output_burst_seconds}")

    @property
    def output_burst(self) -> float:
        """Seconds of the output-token rate its bucket holds."""
        return self.output_burst_seconds if self.output_burst_seconds is not None else self.burst_seconds

    def lower(self, other: Limits) -> Limits:
        """Each limit the lower of these and `other`'s (None where neither gives one), with these bursts."""

        def lower(a: float | None, b: float | None) -> float | None:
            known = [value for value in (a, b) if value is not None]
            return min(known) if known else None

        return Limits(
            lower(self.requests_per_minute, other.requests_per_minute),
            lower(self.tokens_per_minute, other.tokens_per_minute),
            burst_seconds=self.burst_seconds,
            output_tokens_per_minute=lower(self.output_tokens_per_minute, other.output_tokens_per_minute),
        )


#: No limit at all: the library's way to say so (None means "not given": learned where the run learns).
UNLIMITED = Limits(math.inf, math.inf)


class TokenBucket:
    """A continuously refilling bucket: `rate` units per second up to `capacity`.

    The level may go negative after an oversize take: that debt is what keeps the long-run rate exact.
    """

    __slots__ = ("rate", "capacity", "level", "updated_at")

    #: Units added per second.
    rate: float
    #: The most the bucket holds; also the most that can be taken at once without debt.
    capacity: float
    #: Units available at `updated_at` (negative while in debt).
    level: float
    #: The `now` of the last refill.
    updated_at: float

    def __init__(self, rate: float, capacity: float, *, now: float, level: float | None = None) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError(f"rate and capacity must be positive, got rate={rate} capacity={capacity}")
        self.rate = rate
        self.capacity = capacity
        self.level = capacity if level is None else level
        self.updated_at = now

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate:g}/s, capacity={self.capacity:g}, level={self.level:g})"

    def refill(self, now: float) -> None:
        if now > self.updated_at:
            self.level = min(self.capacity, self.level + (now - self.updated_at) * self.rate)
            self.updated_at = now

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken: 0 if now. Oversize amounts wait for a full bucket."""
        self.refill(now)
        needed = min(amount, self.capacity)
        not_before = max(0.0, self.updated_at - now)  # emptied for a pause that has not ended yet
        return max(0.0, not_before + (needed - self.level) / self.rate)

    def take(self, amount: float, now: float) -> None:
        """Take `amount` (callers check `wait_time` first; taking early simply deepens the debt)."""
        self.refill(now)
        self.level -= amount

    def empty_at(self, when: float, now: float) -> None:
        """Make the bucket empty at `when` (a future time is fine): refilling starts from zero there.

        A debt keeps being repaid during the pause (the pause overlaps it rather than adding to it);
        whatever would have accumulated beyond zero is dropped, so the resumption is paced.
        """
        self.refill(now)
        if when > self.updated_at:
            self.level = min(self.capacity, self.level + (when - self.updated_at) * self.rate)
            self.updated_at = when
        self.level = min(self.level, 0.0)


class RateBuckets:
    """The request, token and output-token buckets, taken together or not at all."""

    __slots__ = ("requests", "tokens", "output_tokens")

    requests: TokenBucket | None
    tokens: TokenBucket | None
    output_tokens: TokenBucket | None

    def __init__(self, limits: Limits, *, now: float, start_full: bool = False) -> None:
        """Clients start empty (see the module docstring); a server enforcing limits starts full."""
        self.requests = _bucket(limits.requests_per_minute, limits.burst_seconds, now, start_full)
        self.tokens = _bucket(limits.tokens_per_minute, limits.burst_seconds, now, start_full)
        self.output_tokens = _bucket(limits.output_tokens_per_minute, limits.output_burst, now, start_full)

    def __repr__(self) -> str:
        return f"RateBuckets(requests={self.requests!r}, tokens={self.tokens!r}, output_tokens={self.output_tokens!r})"

    def _amounts(self, tokens: float, output_tokens: float) -> tuple[tuple[TokenBucket | None, float], ...]:
        return ((self.requests, 1), (self.tokens, tokens), (self.output_tokens, output_tokens))

    def wait_time(self, tokens: float, now: float, output_tokens: float = 0) -> float:
        """Seconds until one request of `tokens` (and `output_tokens` reserved) fits every bucket."""
        wait = 0.0
        for bucket, amount in self._amounts(tokens, output_tokens):
            if bucket is not None:
                wait = max(wait, bucket.wait_time(amount, now))
        return wait

    def try_take(self, tokens: float, now: float, output_tokens: float = 0) -> float:
        """Take one request of `tokens` if every bucket has room and return 0; else the seconds to wait."""
        wait = self.wait_time(tokens, now, output_tokens)
        # A wait below the clock's own resolution is "now": sleeping it would not move the clock.
        if wait > max(_EPSILON, 4 * math.ulp(now)):
            return wait
        for bucket, amount in self._amounts(tokens, output_tokens):
            if bucket is not None:
                bucket.take(amount, now)
        return 0.0

    def give_back(self, output_tokens: float, now: float) -> None:
        """Return reserved output tokens the answer did not use (never above the bucket's capacity)."""
        if self.output_tokens is not None and output_tokens > 0:
            self.output_tokens.take(-output_tokens, now)
            self.output_tokens.level = min(self.output_tokens.level, self.output_tokens.capacity)

    def empty_at(self, when: float, now: float) -> None:
        """Every bucket starts refilling from zero at `when`: resuming after a pause is paced, not a burst."""
        for bucket in (self.requests, self.tokens, self.output_tokens):
            if bucket is not None:
                bucket.empty_at(when, now)


def _bucket(per_minute: float | None, burst_seconds: float, now: float, start_full: bool) -> TokenBucket | None:
    if per_minute is None or math.isinf(per_minute):
        return None
    rate = per_minute / 60.0
    # At least one whole request's worth, so a 30 RPM limit can still send.
    capacity = max(rate * burst_seconds, 1.0)
    return TokenBucket(rate, capacity, now=now, level=None if start_full else 0.0)


@dataclass(slots=True)  # not frozen: one is made per request, and a frozen one costs a call per field
class Admission:
    """What a limiter has admitted in all, this request included: every process sharing it together.

    The dispatch loop compares these totals with the server's own view of what was spent, so a shared
    limiter must count everyone it admits, or each process would take the others for a competitor.
    """

    requests: int
    tokens: int
    output_tokens: int = 0


@runtime_checkable
class RateLimiter(Protocol):
    """What the dispatch loop needs from a limiter. In-process buckets and Redis implement it alike."""

    async def acquire(self, tokens: int, output_tokens: int = 0) -> Admission:
        """Return once one request costing `tokens` (and reserving `output_tokens`) may be sent, charged to every limit."""
        ...

    async def refused(self, tokens: int, output_tokens: int = 0) -> None:
        """The server refused a request admitted here: it was not spent. (Only the totals change.)"""
        ...

    async def refund(self, output_tokens: int) -> None:
        """An answer used fewer output tokens than were reserved for it: the rest goes back to the bucket,
        as Anthropic's own limiter does."""
        ...

    async def pause(self, seconds: float) -> None:
        """Nobody sends for `seconds` from now (a rate-limit 429 was seen); then resume paced."""
        ...

    async def set_limits(self, limits: Limits) -> None:
        """Send at these limits from now on (learned from the API, or backed off)."""
        ...

    async def aclose(self) -> None:
        """Release what the limiter holds (connections); the in-process limiter holds nothing."""
        ...


class InProcessLimiter:
    """The embedded default: `RateBuckets` in this process, waited on by sleeping exactly as long as needed.

    Callers are served one at a time in arrival order (an asyncio.Lock), so a large request is not
    starved by a stream of small ones. The one waiting sleeps exactly as long as the buckets need, and wakes
    early when a refund or new limits may have made room sooner: an output-token reservation that took the
    bucket into debt is mostly given back a moment later, when its answer comes.
    """

    __slots__ = (
        "limits", "_buckets", "_clock", "_sleep", "_lock", "_queued", "_paused_until", "_admitted_requests", "_admitted_tokens", "_admitted_output",
        "_room",
    )

    def __init__(self, limits: Limits, *, clock: Now = loop_time, sleep: Sleep = asyncio.sleep) -> None:
        self.limits = limits
        self._clock = clock
        self._sleep = sleep
        self._buckets = RateBuckets(limits, now=clock())
        self._lock = asyncio.Lock()
        #: Callers waiting for their turn, or taking it: while there are any, a newcomer queues behind them.
        self._queued = 0
        self._paused_until = float("-inf")
        self._admitted_requests = 0
        self._admitted_tokens = 0
        self._admitted_output = 0
        #: Set when a refund or new limits may let the waiting caller go sooner than it was told.
        self._room = asyncio.Event()

    def __repr__(self) -> str:
        return f"InProcessLimiter({self.limits!r})"

    @property
    def paused_until(self) -> float:
        """Clock time before which nothing is sent (-inf when not paused)."""
        return self._paused_until

    async def acquire(self, tokens: int, output_tokens: int = 0) -> Admission:
        if tokens < 0 or output_tokens < 0:
            raise ValueError(f"tokens must not be negative, got {tokens} and {output_tokens}")
        if not self._queued:  # nobody waits, so nobody is overtaken: admitted now, or in the queue
            admitted = self._try_admit(tokens, output_tokens)
            if isinstance(admitted, Admission):
                return admitted
        self._queued += 1
        try:
            async with self._lock:
                while True:
                    admitted = self._try_admit(tokens, output_tokens)
                    if isinstance(admitted, Admission):
                        return admitted
                    await self._wait(admitted)
        finally:
            self._queued -= 1

    async def _wait(self, seconds: float) -> None:
        """Sleep `seconds`, or less if room is made meanwhile (`_room`)."""
        self._room.clear()
        sleeping = asyncio.ensure_future(self._sleep(seconds))
        woken = asyncio.ensure_future(self._room.wait())
        try:
            await asyncio.wait((sleeping, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            woken.cancel()

    def _try_admit(self, tokens: int, output_tokens: int) -> Admission | float:
        """Take the request if it may go now; else the seconds to wait (for the pause to end, or for room)."""
        now = self._clock()
        wait = self._paused_until - now
        if wait <= max(_EPSILON, 4 * math.ulp(now)):
            wait = self._buckets.try_take(tokens, now, output_tokens)
        if wait != 0.0:
            return wait
        self._admitted_requests += 1
        self._admitted_tokens += tokens
        self._admitted_output += output_tokens
        return Admission(self._admitted_requests, self._admitted_tokens, self._admitted_output)

    def wait_time(self, tokens: int, output_tokens: int = 0) -> float:
        """Seconds until a request of `tokens` could be admitted, as things stand (no waiting, nothing taken):
        for choosing, among several accounts, the one that can take it soonest."""
        now = self._clock()
        return max(self._paused_until - now, self._buckets.wait_time(tokens, now, output_tokens), 0.0)

    async def refused(self, tokens: int, output_tokens: int = 0) -> None:
        self._admitted_requests -= 1
        self._admitted_tokens -= tokens
        self._admitted_output -= output_tokens

    async def refund(self, output_tokens: int) -> None:
        self._admitted_output -= output_tokens
        self._buckets.give_back(output_tokens, self._clock())
        if self._queued:
            self._room.set()

    async def pause(self, seconds: float) -> None:
        now = self._clock()
        until = now + seconds
        if until > self._paused_until:
            self._paused_until = until
            self._buckets.empty_at(until, now)

    async def set_limits(self, limits: Limits) -> None:
        """New rates from now on. What the buckets hold carries over (up to their new capacity), and so
        does a pause. An acquire already waiting looks again at once."""
        now = self._clock()
        old = self._buckets
        self._buckets = RateBuckets(limits, now=now)
        pairs = ((old.requests, self._buckets.requests), (old.tokens, self._buckets.tokens), (old.output_tokens, self._buckets.output_tokens))
        for before, after in pairs:
            if before is not None and after is not None:
                before.refill(now)
                after.level = min(before.level, after.capacity)
                after.updated_at = max(before.updated_at, now)
        self.limits = limits
        if self._queued:
            self._room.set()

    async def aclose(self) -> None:
        return None
