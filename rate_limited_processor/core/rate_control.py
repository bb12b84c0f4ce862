"""Closed-loop control of the sending rate: what the server's 429s say about its limit, whatever it states.

Usage::

    control = RateController(requests_ceiling_known=False, now=clock())
    control.sent(now)                                     # each request as it goes out
    control.answered(Answer(sent_at, tokens, ...), now)   # each answer from the server...
    control.lost(sent_at)                                 # ...or an attempt that told nothing (no answer, a 5xx)
    limits = control.limits(ceiling, now)                 # what to send at: never above the ceiling

The limits a user gives and the ones the API's x-ratelimit headers state are ceilings, not the truth: a
gateway may hide them, a given number may be ten times too high. Below the ceiling, the controller sets the
rate from how the server actually answers. The limit is a rate, and latency a separate, measured quantity:
the controller paces a rate, and the requests in flight follow from it (Little's law), never the other way
round. Time, not the round trip, is its clock, so a run whose answers take 30 s ramps up and recovers in
seconds, as one whose answers take 0.1 s does:

* **The window follows from the rate.** The requests allowed in flight are `needed_in_flight`: the rate in
  force times the latency seen (smoothed, plus `LATENCY_DEVIATIONS` mean deviations, and at least the age of
  the oldest request still in flight, so a long tail does not throttle the rate). Before the first refusal
  the window also grows with time (doubling every `WINDOW_DOUBLING_SECONDS` from `INITIAL_WINDOW`), and is the
  lower of the two: a ceiling of nonsense (a limit told 1e9) is let out no faster than time grows it.
* **Slow start.** When no ceiling is known for requests, the rate starts at four requests per round trip
  and doubles every round trip of sending (between `SLOW_START_DOUBLING` bounds: at least every 0.5 s,
  whatever the latency), until the first rate-limit 429, which halves it.
* **Decrease to what the server admitted, once per episode.** A server over its limit admits exactly its
  limit and refuses the rest, so among the requests sent since the refusals began, the rate of those it
  admitted *is* its limit. On a rate-limit 429 the rate is cut to `TARGET` (97%) of that, in the dimension the
  429 names (tokens when its body says so, else requests). Only requests whose answers are all in are
  measured (refusals come back at once, admissions after the latency), at least `MIN_SAMPLES` of them, over
  the time we were sending. A cut is at least to `LONE_CUT` (90%) of what we were sending; until a storm
  can be measured, the cut is to `LONE_CUT`, or `FALLBACK_CUT` (50%) when refused again after the pause.
  Only a 429 to a request sent after the previous cut cuts again: one cut per episode, not per 429.
* **An explained 429 cuts nothing.** Headers that show the bucket empty at the limit they state
  (`Answer.explained`) are the bucket working, not evidence that the limit is lower than stated; the
  server's hint pauses the senders, the rate stays.
* **Additive increase, per second.** Each admitted answer raises the rate by `PROBE` (0.1%) of the limit
  found, faster the longer no 429 has come (or by `RECOVERY`, 1%, where no limit has been found), but by at
  most `MAX_GROWTH_PER_SECOND` (10%) of the rate per second however many answers come. Paused time brings no
  answers, so it grows nothing.
* **An honest limit found.** A lone 429 after a calm spell says where the limit is only while we were
  pressing it (`PRESSING`, 90% of our limits or more); the limit reported for next time is what the server
  admitted over at least `LONG_RUN_SECONDS` of such pressing, never a rate the window or the latency held down.
* **Application-limited**: the rate does not grow while we send at less than half of it (a slow source, the
  concurrency cap), so a rate is never "proven" by traffic that did not use it.
* **A 429 without a hint** pauses every sender for about one request's interval at the cut rate, doubling
  with each round of refusals in a row, up to the policy's cap. A server's own hint is obeyed as it is: see
  `decisions.next_step`.

Pure: no I/O and no clock; every method takes `now`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from .limiter import UNLIMITED, Limits
from .rate_cut import cut, long_run_rate, sending_rate, storm_samples
from .rate_measure import (
    _OUTPUT_TOKENS,
    _REQUESTS,
    _TOKENS,
    _Cap,
    _InFlight,
    _lower,
    _Measure,
    _Pauses,
    _per_second,
    _RoundTrip,
    _Sample,
    _Sends,
    _Storm,
)
from .rate_tuning import (
    ACCELERATION as ACCELERATION,
)
from .rate_tuning import (
    CALM_ANSWERS as CALM_ANSWERS,
)
from .rate_tuning import (
    DEFAULT_ROUND_TRIP as DEFAULT_ROUND_TRIP,
)
from .rate_tuning import (
    FALLBACK_CUT as FALLBACK_CUT,
)
from .rate_tuning import (
    FIRST_ANSWER_PATIENCE as FIRST_ANSWER_PATIENCE,
)
from .rate_tuning import (
    HISTORY_ANSWERS as HISTORY_ANSWERS,
)
from .rate_tuning import (
    HISTORY_SECONDS as HISTORY_SECONDS,
)
from .rate_tuning import (
    INITIAL_REQUESTS_PER_ROUND_TRIP as INITIAL_REQUESTS_PER_ROUND_TRIP,
)
from .rate_tuning import (
    INITIAL_WINDOW as INITIAL_WINDOW,
)
from .rate_tuning import (
    LATENCY_DEVIATIONS as LATENCY_DEVIATIONS,
)
from .rate_tuning import (
    LONE_CUT as LONE_CUT,
)
from .rate_tuning import (
    LONG_RUN_SECONDS as LONG_RUN_SECONDS,
)
from .rate_tuning import (
    MAX_GROWTH_PER_SECOND as MAX_GROWTH_PER_SECOND,
)
from .rate_tuning import (
    MIN_CUT as MIN_CUT,
)
from .rate_tuning import (
    MIN_HINTLESS_PAUSE as MIN_HINTLESS_PAUSE,
)
from .rate_tuning import (
    MIN_SAMPLES as MIN_SAMPLES,
)
from .rate_tuning import (
    OVERDUE_START_RATE as OVERDUE_START_RATE,
)
from .rate_tuning import (
    PRESSING as PRESSING,
)
from .rate_tuning import (
    PROBE as PROBE,
)
from .rate_tuning import (
    RECOVERY as RECOVERY,
)
from .rate_tuning import (
    ROUND_TRIP_WEIGHT as ROUND_TRIP_WEIGHT,
)
from .rate_tuning import (
    SIZE_WEIGHT as SIZE_WEIGHT,
)
from .rate_tuning import (
    SLOW_START_DOUBLING as SLOW_START_DOUBLING,
)
from .rate_tuning import (
    STORM_OVER_ANSWERS as STORM_OVER_ANSWERS,
)

# The constants, importable from here as before (`rate_tuning` says why each is what it is).
from .rate_tuning import (
    TARGET as TARGET,
)
from .rate_tuning import (
    WINDOW_DOUBLING_SECONDS as WINDOW_DOUBLING_SECONDS,
)

__all__ = ["Answer", "ControlReport", "RateController"]


@dataclass(slots=True)  # not frozen: one is made per request, and a frozen one costs a call per field
class Answer:
    """What the controller needs to know of one answer from the server."""

    #: When its request was sent.
    sent_at: float
    #: The request's estimated tokens.
    tokens: int
    #: The server refused it for its rate limit (a rate-limit 429).
    rate_limited: bool = False
    #: That refusal names the token limit...
    on_tokens: bool = False
    #: ...or the output-token limit (else the request limit, or none).
    on_output_tokens: bool = False
    #: Output tokens its answer used (Anthropic's usage.output_tokens; 0 when refused).
    output_tokens: int = 0
    #: The refusal's headers say the server's bucket was empty at a limit it states: the bucket working, not
    #: evidence that the limit is lower than stated. It pauses (by its hint) but cuts nothing.
    explained: bool = False


@dataclass(frozen=True, slots=True)
class ControlReport:
    """What the control loop found, for the summary."""

    #: Rate-limit 429s that cut the rate (at most one per round trip).
    cuts: int
    #: Per minute, where the server's limit appears to be (None: not found).
    found_requests_per_minute: float | None
    found_tokens_per_minute: float | None
    found_output_tokens_per_minute: float | None = None


class RateController:
    """The rate the server's answers allow, in requests and tokens per second, below a ceiling."""

    __slots__ = (
        "_requests", "_tokens", "_output_tokens", "_ceiling", "_capped_at", "_capped_limits",  # our caps, and the ceiling
        "_slow_start", "_updated_at", "_first_sent", "_refused", "_window", "_last_cut", "_admitted_since_cut", "cuts",
        "_round_trip", "_mean_tokens", "_mean_output_tokens",  # what answers take, and hold
        "_answers", "_sends", "_in_flight", "_pauses", "_storm",  # what happened (`rate_measure`)
    )

    def __init__(self, *, requests_ceiling_known: bool, now: float) -> None:
        self._requests = _Cap()
        self._tokens = _Cap()
        self._output_tokens = _Cap()
        #: Slow start runs until the first cut, and only where nothing bounds the request rate.
        self._slow_start = not requests_ceiling_known
        #: Smoothed seconds from sending to an admitted answer, and its smoothed mean deviation.
        self._round_trip = _RoundTrip()
        #: What an answer holds on average (smoothed): to turn token limits into requests.
        self._mean_tokens = 0.0
        self._mean_output_tokens = 0.0
        #: When the first request went out (None: not yet), and whether any was refused for the rate limit.
        self._first_sent: float | None = None
        self._refused = False
        #: Recent answers (to measure what the server admitted), the sends of the last second, those in flight.
        self._answers: deque[_Sample] = deque(maxlen=HISTORY_ANSWERS)
        self._sends = _Sends()
        self._in_flight = _InFlight()
        self._window = float(INITIAL_WINDOW)
        #: When the last cut happened: only a 429 to a request sent after it cuts again.
        self._last_cut = -math.inf
        self._pauses = _Pauses()
        self._storm = _Storm()
        self._admitted_since_cut = 0
        self._updated_at = now
        #: The ceiling the caps were last told (`limits`): the tuner keeps one until a report changes it.
        self._ceiling: Limits | None = None
        #: The caps (per second) the last capped `limits` were made for under that ceiling, and those limits:
        #: most answers change neither.
        self._capped_at: tuple[float, float, float] | None = None
        self._capped_limits = UNLIMITED
        #: Rate-limit 429s that cut the rate.
        self.cuts = 0

    def __repr__(self) -> str:
        requests, tokens = self._requests.per_second, self._tokens.per_second
        return f"RateController(requests={requests:.3g}/s, tokens={tokens:.3g}/s, cuts={self.cuts}, slow_start={self._slow_start})"

    # -- what to send at ----------------------------------------------------------------------------

    def limits(self, ceiling: Limits, now: float) -> Limits:
        """The limits to send at: the ceiling, lowered to what the server's answers allow."""
        if ceiling is not self._ceiling:
            self._ceiling = ceiling
            if self._slow_start and ceiling.requests_per_minute is not None and math.isfinite(ceiling.requests_per_minute):
                self._slow_start = False  # a limit became known (the API's headers): it bounds the rate now
                self._requests.per_second = math.inf
            self._requests.ceiling = _per_second(ceiling.requests_per_minute)
            self._tokens.ceiling = _per_second(ceiling.tokens_per_minute)
            self._output_tokens.ceiling = _per_second(ceiling.output_tokens_per_minute)
            self._capped_at = None
        self._slow_start_growth(now)
        if not self._capped():
            return ceiling  # no cap of ours: the ceiling alone applies
        caps = (self._requests.per_second, self._tokens.per_second, self._output_tokens.per_second)
        if caps != self._capped_at:
            self._capped_at = caps
            self._capped_limits = Limits(
                _lower(ceiling.requests_per_minute, caps[0] * 60),
                _lower(ceiling.tokens_per_minute, caps[1] * 60),
                burst_seconds=ceiling.burst_seconds,
                output_tokens_per_minute=_lower(ceiling.output_tokens_per_minute, caps[2] * 60),
                output_burst_seconds=ceiling.output_burst_seconds,
            )
        return self._capped_limits

    def window(self, now: float) -> float:
        """The most requests to have in flight now: enough to hold the rate in force at the latency seen
        (Little's law), and never fewer than the window grown from answers (and, before any refusal, from time)."""
        if self._first_sent is None:
            return self._window
        doublings = (now - self._first_sent) / WINDOW_DOUBLING_SECONDS
        if self._round_trip.smoothed is not None and (self._refused or doublings >= 40):
            return max(self._window, self.needed_in_flight(now))
        grown = INITIAL_WINDOW * math.pow(2.0, min(40.0, doublings))
        if not self._refused:
            # Nothing has said the ceiling is wrong, nor that it is right: a ceiling of nonsense (a limit told 1e9)
            # is let out at most as fast as time grows the window, however short the latency.
            return max(self._window, min(grown, self.needed_in_flight(now)) if self._round_trip.smoothed is not None else grown)
        if math.isfinite(self.requests_per_second()):
            # Refused, so the rate is now paced by a cut to what we were sending; only the latency is unknown.
            return max(self._window, grown)
        return self._window

    def needed_in_flight(self, now: float) -> float:
        """Requests in flight that hold the rate in force at the latency seen: R x (latency + 4 deviations), the
        latency at least the age of the oldest request still in flight (answers slower than any seen so far
        must not throttle the rate). 0 until an admitted answer has told the latency; math.inf when nothing
        bounds the rate."""
        if self._round_trip.smoothed is None:
            return 0.0
        rate = self.requests_per_second()
        if not math.isfinite(rate):
            return math.inf
        latency = self._round_trip.smoothed + LATENCY_DEVIATIONS * self._round_trip.deviation
        if (oldest := self._in_flight.oldest()) is not None:
            latency = max(latency, now - oldest)
        return rate * latency

    def requests_per_second(self) -> float:
        """The request rate in force: the lowest of our caps and the ceilings, token limits turned into requests
        by the mean size of the answers seen (math.inf: nothing bounds it)."""
        rate = min(self._requests.per_second, self._requests.ceiling)
        for cap, size in ((self._tokens, self._mean_tokens), (self._output_tokens, self._mean_output_tokens)):
            per_second = min(cap.per_second, cap.ceiling)
            if size > 0 and math.isfinite(per_second):
                rate = min(rate, per_second / size)
        return rate

    def hintless_pause(self) -> float:
        """How long every sender pauses after a rate-limit 429 that says nothing about waiting."""
        cap = self._requests.per_second
        interval = 1.0 / cap if math.isfinite(cap) and cap > 0 else self._round_trip.or_default()
        return max(MIN_HINTLESS_PAUSE, interval) * 2.0 ** max(0, self._storm.rounds - 1)

    def report(self) -> ControlReport:
        """Where the limits appear to be: what the server admitted over the long run at the last cut (a long
        window averages out its burst allowance and our probing above it), else the last measurement."""
        return ControlReport(
            self.cuts, self._requests.found_per_minute(), self._tokens.found_per_minute(), self._output_tokens.found_per_minute()
        )

    # -- what happened ------------------------------------------------------------------------------

    def sent(self, now: float) -> None:
        """A request went out."""
        self._sends.add(now)
        if self._first_sent is None:
            self._first_sent = now
        self._in_flight.add(now)

    def lost(self, sent_at: float) -> None:
        """An attempt ended with nothing to learn from (no answer, a 5xx): it is no longer in flight."""
        self._in_flight.remove(sent_at)

    def paused(self, now: float, until: float) -> None:
        """Nobody sends from `now` until `until` (a 429's pause): that time grows nothing and measures nothing."""
        self._pauses.add(now, until)

    def answered(self, answer: Answer, now: float) -> None:
        """An answer from the server arrived. (No answer at all, or a 5xx, tells nothing: report it as `lost`.)"""
        self._in_flight.remove(answer.sent_at)
        after_the_pause = answer.sent_at > self._pauses.until
        self._answers.append(_Sample(answer.sent_at, answer.tokens, not answer.rate_limited, answer.output_tokens))
        while self._answers and self._answers[0].sent_at < now - HISTORY_SECONDS:
            self._answers.popleft()
        if not answer.rate_limited:
            self._admitted(answer, now)
            return
        self._slow_start_growth(now)
        if answer.explained:
            return  # the server's bucket, empty at the limit it states: its hint pauses us, nothing is cut
        self._refused = True
        lone = self._storm.refused(answer.sent_at, after_the_pause=after_the_pause, rate=min(self._requests.per_second, self._requests.ceiling))
        if answer.sent_at > self._last_cut:
            if answer.on_output_tokens:
                self._cut(self._output_tokens, _OUTPUT_TOKENS, lone, now)
            elif answer.on_tokens:
                self._cut(self._tokens, _TOKENS, lone, now)
            else:
                self._cut(self._requests, _REQUESTS, lone, now)

    # -- the loop -----------------------------------------------------------------------------------

    def _admitted(self, answer: Answer, now: float) -> None:
        """An admitted answer: the latency and sizes it tells, the window and the caps it grows."""
        latency = now - answer.sent_at
        self._round_trip.add(latency)
        self._mean_tokens += SIZE_WEIGHT * (answer.tokens - self._mean_tokens) if self._mean_tokens else answer.tokens
        self._mean_output_tokens += SIZE_WEIGHT * (answer.output_tokens - self._mean_output_tokens) if self._mean_output_tokens else answer.output_tokens
        self._slow_start_growth(now)  # after the round trip: the first answer in starts the rate from it
        self._storm.admitted(answer.sent_at)
        self._admitted_since_cut += 1
        if self._in_flight.count + 1 >= self._window / 2:  # the window is in use: it may grow
            self._window += 1
        if not self._slow_start and self._capped() and self._using_the_rate(now):
            acceleration = 1 + self._admitted_since_cut / ACCELERATION
            per_second = self._answers_per_second()
            self._requests.grow(acceleration, per_second)
            self._tokens.grow(acceleration, per_second)
            self._output_tokens.grow(acceleration, per_second)

    def _cut(self, cap: _Cap, measure: _Measure, lone: bool, now: float) -> None:
        """Send at just below what the server admitted since the refusals began, in the 429's dimension
        (`cap`, counted by `measure`): see `rate_cut`."""
        oldest = self._in_flight.oldest()
        until = oldest if oldest is not None else now
        recent = storm_samples(self._answers, self._storm.since, until)
        sending = sending_rate(recent, self._sends.times, self._answers, self._pauses.spans, cap, measure, now)
        cut(
            cap, recent, sending, self._pauses.spans, measure,
            slow_start=self._slow_start, rounds=self._storm.rounds, round_trip_known=self._round_trip.smoothed is not None, lone=lone,
        )
        self._slow_start = False
        self._last_cut = now
        self._admitted_since_cut = 0
        # Halve the window, but leave room for the rate just set: at a long latency, many are in flight at once.
        sustain = 2 * self._requests.per_second * self._round_trip.or_default() if math.isfinite(self._requests.per_second) else 0.0
        self._window = max(1.0, min(self._window, self._in_flight.count + 1) / 2, sustain)
        self.cuts += 1
        long_run = long_run_rate(self._answers, until, measure, cap.found)
        if long_run is not None:
            cap.long_run = long_run

    def _capped(self) -> bool:
        """Some cap of ours is below the ceiling (else the ceiling alone applies, and nothing grows)."""
        return not (math.isinf(self._requests.per_second) and math.isinf(self._tokens.per_second) and math.isinf(self._output_tokens.per_second))

    def _slow_start_growth(self, now: float) -> None:
        """In slow start, double the rate every `SLOW_START_DOUBLING` seconds of sending."""
        if not self._slow_start:
            self._updated_at = now
            return
        sending = max(0.0, now - max(self._updated_at, min(now, self._pauses.until)))
        self._updated_at = now
        if math.isinf(self._requests.per_second):
            if self._round_trip.smoothed is not None:  # the first answer is in: start from a round trip's worth
                self._requests.per_second = INITIAL_REQUESTS_PER_ROUND_TRIP / max(self._round_trip.smoothed, 1e-3)
            elif (overdue_at := self.first_answer_overdue_at()) is not None and now >= overdue_at:  # slow: start slowly, grow by time
                self._requests.per_second = OVERDUE_START_RATE
            return
        if sending <= 0 or not self._using_the_rate(now):
            return
        fastest, slowest = SLOW_START_DOUBLING  # at most one doubling per update: answers come in bunches after a long latency
        doubling = min(slowest, max(fastest, self._round_trip.or_default())) if self._round_trip.smoothed is not None else slowest
        self._requests.per_second *= 2.0 ** min(1.0, sending / doubling)

    def first_answer_overdue_at(self) -> float | None:
        """When the first answer is overdue (`FIRST_ANSWER_PATIENCE` after the first send); None once one told a latency."""
        return self._first_sent + FIRST_ANSWER_PATIENCE if self._round_trip.smoothed is None and self._first_sent is not None else None

    def _using_the_rate(self, now: float) -> bool:
        """We send at half our request cap or more (an uncapped rate is used by definition)."""
        if math.isinf(self._requests.per_second):
            return True
        return self._sends.in_the_last_second(now) >= 0.5 * self._requests.per_second

    def _answers_per_second(self) -> float:
        rate = self.requests_per_second()
        return rate if math.isfinite(rate) else 0.0
