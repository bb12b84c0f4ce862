"""What the rate controller measures, kept apart from what it decides (`rate_control`): its caps, the requests
in flight, the sends of the last second, the pauses, a storm of refusals, and rates over samples.

Pure: no I/O and no clock; every method takes `now` or a send time.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from .rate_tuning import (
    CALM_ANSWERS,
    DEFAULT_ROUND_TRIP,
    HISTORY_SECONDS,
    MAX_GROWTH_PER_SECOND,
    MIN_SAMPLES,
    PROBE,
    RECOVERY,
    ROUND_TRIP_WEIGHT,
    STORM_OVER_ANSWERS,
)


@dataclass(slots=True)
class _Sample:
    sent_at: float
    tokens: int
    admitted: bool
    output_tokens: int = 0


#: How much of a dimension a sample stands for.
_Measure = Callable[[_Sample], float]
_REQUESTS: _Measure = lambda sample: 1.0  # noqa: E731
_TOKENS: _Measure = lambda sample: float(sample.tokens)  # noqa: E731
_OUTPUT_TOKENS: _Measure = lambda sample: float(sample.output_tokens)  # noqa: E731


@dataclass(slots=True)
class _Cap:
    """Our own cap on one dimension (requests or tokens per second), and the limit found there."""

    #: math.inf: no cap of ours, the ceiling alone applies.
    per_second: float = math.inf
    #: Where the server's limit appears to be, per second (None until a cut could tell).
    found: float | None = None
    #: The ceiling on this dimension, per second, as the last `limits()` call gave it.
    ceiling: float = math.inf
    #: What the server admitted over the whole remembered history at the last cut (when that spans enough).
    long_run: float | None = None

    def grow(self, acceleration: float, answers_per_second: float) -> None:
        """One admitted answer's worth of increase: at most `MAX_GROWTH_PER_SECOND` of the rate per second."""
        if math.isinf(self.per_second):
            return
        most = MAX_GROWTH_PER_SECOND / max(1.0, answers_per_second)
        if self.found is None:
            self.per_second *= 1 + min(RECOVERY, most)
        else:
            self.per_second += min(PROBE * acceleration, most) * self.found
        if self.per_second >= self.ceiling:
            self.per_second = math.inf  # back at the ceiling: it alone applies again

    def cut_to(self, rate: float) -> None:
        bounded = min(rate, self.per_second, self.ceiling)
        if math.isfinite(bounded) and bounded > 0:
            self.per_second = bounded

    def found_per_minute(self) -> float | None:
        """Where the limit appears to be: the long run at the last cut if measured, else the last measurement."""
        found = self.long_run if self.long_run is not None else self.found
        return found * 60 if found is not None else None


class _RoundTrip:
    """Seconds from sending to an admitted answer, smoothed, and its smoothed mean deviation (as TCP estimates its
    round trip); `smoothed` is None until an admitted answer has told it."""

    __slots__ = ("smoothed", "deviation")

    def __init__(self) -> None:
        self.smoothed: float | None = None
        self.deviation = 0.0

    def add(self, latency: float) -> None:
        if self.smoothed is not None:
            self.deviation += ROUND_TRIP_WEIGHT * (abs(latency - self.smoothed) - self.deviation)
        self.smoothed = _smoothed(self.smoothed, latency)

    def or_default(self) -> float:
        return self.smoothed if self.smoothed is not None else DEFAULT_ROUND_TRIP


class _InFlight:
    """Send times of the requests in flight: a count per time, and a heap to find the oldest."""

    __slots__ = ("_times", "_heap", "count")

    def __init__(self) -> None:
        self._times: Counter[float] = Counter()
        self._heap: list[float] = []
        self.count = 0

    def add(self, sent_at: float) -> None:
        self._times[sent_at] += 1
        self.count += 1
        heapq.heappush(self._heap, sent_at)

    def remove(self, sent_at: float) -> None:
        """The request sent at `sent_at` is no longer in flight."""
        if sent_at in self._times:
            self.count -= 1
        remaining = self._times[sent_at] - 1
        if remaining > 0:
            self._times[sent_at] = remaining
        else:
            self._times.pop(sent_at, None)
        heap = self._heap
        while heap and heap[0] not in self._times:
            heapq.heappop(heap)

    def oldest(self) -> float | None:
        """When the oldest request still in flight was sent (None: none is)."""
        return self._heap[0] if self._heap else None


class _Sends:
    """The sends of the last second, and at least the last `2 x MIN_SAMPLES` (from the last minute)."""

    __slots__ = ("times",)

    def __init__(self) -> None:
        self.times: deque[float] = deque()

    def add(self, now: float) -> None:
        self.times.append(now)
        self.forget(now)

    def forget(self, now: float) -> None:
        times = self.times
        while times and times[0] < now - 1.0 and (len(times) > 2 * MIN_SAMPLES or times[0] < now - HISTORY_SECONDS):
            times.popleft()

    def in_the_last_second(self, now: float) -> int:
        self.forget(now)
        # What is kept is the last second's sends and at most `2 x MIN_SAMPLES` older ones: count those off
        # the front rather than walk a second's worth of sends on every answer.
        older = 0
        for at in self.times:
            if at >= now - 1.0:
                break
            older += 1
        return len(self.times) - older


class _Pauses:
    """Recent pauses, (from, until), oldest first: not sending time; and when the last one ends."""

    __slots__ = ("spans", "until")

    def __init__(self) -> None:
        self.spans: deque[tuple[float, float]] = deque()
        self.until = -math.inf

    def add(self, now: float, until: float) -> None:
        if until <= now:
            return
        if self.spans and now <= self.spans[-1][1]:
            start, end = self.spans.pop()
            self.spans.append((start, max(end, until)))
        else:
            self.spans.append((now, until))
        while self.spans and self.spans[0][1] < now - HISTORY_SECONDS:
            self.spans.popleft()
        self.until = max(self.until, until)


class _Storm:
    """Refusals close together, by send time: when the current storm began, and its rounds of refusals in a row."""

    __slots__ = ("last_refusal_sent", "since", "admitted_since_refusal", "rounds")

    def __init__(self) -> None:
        #: The send time of the last refused request, and the admitted answers since the last refusal.
        self.last_refusal_sent = -math.inf
        #: The send time of the first refused request of the current storm (refusals closer than a calm spell).
        self.since = -math.inf
        self.admitted_since_refusal = 0
        #: Rounds of refusals in a row: a 429 to a request sent after the last pause ended starts a new one.
        self.rounds = 0

    def admitted(self, sent_at: float) -> None:
        # Admitted though sent after a refusal, or admitted several times in a row: the storm is over.
        if sent_at > self.last_refusal_sent or self.admitted_since_refusal >= STORM_OVER_ANSWERS:
            self.rounds = 0
        self.admitted_since_refusal += 1

    def refused(self, sent_at: float, *, after_the_pause: bool, rate: float) -> bool:
        """A rate-limit refusal of a request sent at `sent_at`, at a request rate of `rate`; whether it is a lone one."""
        if after_the_pause or self.rounds == 0:
            self.rounds += 1
        # Lone: no other request of the last `CALM_ANSWERS` sent (at the current rate) was refused. (Counted
        # by send time: admitted answers lag refusals by the server's latency, and keep coming during a pause.)
        calm = CALM_ANSWERS / rate if math.isfinite(rate) and rate > 0 else 0.0
        after_calm = sent_at - self.last_refusal_sent >= calm
        if after_calm:
            self.since = sent_at
        lone = after_calm and self.admitted_since_refusal >= CALM_ANSWERS
        self.last_refusal_sent = max(self.last_refusal_sent, sent_at)
        self.admitted_since_refusal = 0
        return lone


def _rate_of(samples: list[_Sample], pauses: deque[tuple[float, float]], measure: _Measure, *, span_of: list[_Sample] | None = None) -> float | None:
    """Requests (or tokens, as `measure` counts) per second in these samples, over the sending time of
    `span_of` (default: the samples themselves), less the time paused in it. None when there is no span."""
    spanned = span_of if span_of is not None else samples
    if len(spanned) < 2:
        return None
    first = min(sample.sent_at for sample in spanned)
    last = max(sample.sent_at for sample in spanned)
    paused = sum(max(0.0, min(end, last) - max(start, first)) for start, end in pauses)
    span = last - first - paused
    if span <= 0:
        return None
    # n sends spread over a span make n - 1 gaps: the rate is (n - 1) / span for the whole, scaled for a part.
    scale = (len(spanned) - 1) / len(spanned) / span
    return sum(measure(sample) for sample in samples) * scale


def _per_second(per_minute: float | None) -> float:
    return math.inf if per_minute is None else per_minute / 60


def _lower(ceiling: float | None, own: float) -> float | None:
    if math.isinf(own):
        return ceiling
    return own if ceiling is None else min(ceiling, own)


def _smoothed(previous: float | None, sample: float) -> float:
    if previous is None:
        return max(sample, 0.0)
    return previous + ROUND_TRIP_WEIGHT * (sample - previous)
