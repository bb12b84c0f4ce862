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

import heapq
import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from .limiter import UNLIMITED, Limits

__all__ = ["Answer", "ControlReport", "RateController"]

#: A measured cut goes to this fraction of the rate the server admitted: just below its limit.
TARGET = 0.97
#: One measured cut never goes below this fraction of what we were sending.
MIN_CUT = 0.25
#: A lone 429 after a calm spell (we crept just over the limit) cuts to this fraction of what we were sending...
LONE_CUT = 0.9
#: ...and a 429 in a storm too young to measure, or the first of a slow start, to this fraction.
FALLBACK_CUT = 0.5
#: Each admitted answer raises the rate by this fraction of the limit found, times 1 + (answers since the last
#: cut) / ACCELERATION: a limit underestimated, or raised, is found again.
PROBE = 0.001
ACCELERATION = 300
#: With no limit found yet, each admitted answer raises the rate by this fraction of itself.
RECOVERY = 0.01
#: In slow start the rate doubles every round trip of sending, but at most every 0.1 s and at least every 0.5 s.
SLOW_START_DOUBLING = (0.1, 0.5)
#: However many answers come per second, the rate grows by at most this fraction per second. Time is the clock,
#: not the round trip: a 429 comes back at once, whatever the latency of an admitted answer, so an overshoot is
#: heard of within a second, and a 9 s answer must not make recovery take minutes.
MAX_GROWTH_PER_SECOND = 0.1
#: Slow start begins at this many requests per round trip.
INITIAL_REQUESTS_PER_ROUND_TRIP = 4.0
#: This many admitted answers in a row end a storm (refusals come back at once, admissions after the latency).
STORM_OVER_ANSWERS = 4
#: Requests in flight at most before any answer, growing by one per admitted answer, halved at a cut. Each
#: request of the first window is a 429 when the limit told is nonsense (1e9) and the server's 429s give useless
#: hints: 16 cost 25 of 600 requests against a 600 RPM server that hints 3 ms; 8 cost 13. Told the truth, 8
#: costs one more round trip of start-up than 16.
INITIAL_WINDOW = 8
#: Until an admitted answer tells the latency, the window also doubles every this many seconds: time, not
#: answers, is the clock, so an answer that takes 30 s does not hold a run to 8 requests for 30 s. (The rate is
#: paced meanwhile: by the limits, and after a refusal by a cut to what we were actually sending.)
WINDOW_DOUBLING_SECONDS = 0.25
#: Little's law: holding R requests a second, each answered in L seconds, takes R x L in flight. Once the
#: latency is known, the window holds the rate in force for the smoothed latency plus this many of its mean
#: deviations (TCP's retransmission timeout), so a long tail does not throttle the rate.
LATENCY_DEVIATIONS = 4.0
#: A lone 429 tells where the limit is only while we were sending at this fraction of our limits or more.
PRESSING = 0.9
#: What the server admitted is measured from at least this many answers.
MIN_SAMPLES = 8
#: This many admitted answers without a 429, and this many requests' worth of sending time since the last
#: refused request, make a calm spell: the next 429 is a lone one.
CALM_ANSWERS = 20
#: The limit reported in the summary is what the server admitted over at least this many seconds.
LONG_RUN_SECONDS = 10.0
#: The most answers remembered, and for how long at most.
HISTORY_ANSWERS = 2_000
HISTORY_SECONDS = 60.0
#: The round trip assumed before one has been measured; the least a hint-less pause lasts.
DEFAULT_ROUND_TRIP = 0.1
MIN_HINTLESS_PAUSE = 0.05
#: Smoothing of the round-trip estimate (the weight of each new sample)...
ROUND_TRIP_WEIGHT = 0.125
#: ...and of the mean size of an answer.
SIZE_WEIGHT = 1 / 64


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


class RateController:
    """The rate the server's answers allow, in requests and tokens per second, below a ceiling."""

    __slots__ = (
        "_requests",
        "_tokens",
        "_output_tokens",
        "_slow_start",
        "_round_trip",
        "_round_trip_deviation",
        "_mean_tokens",
        "_mean_output_tokens",
        "_first_sent",
        "_refused",
        "_answers",
        "_sends",
        "_in_flight",
        "_in_flight_heap",
        "_in_flight_count",
        "_window",
        "_last_cut",
        "_pauses",
        "_paused_until",
        "_last_refusal_sent",
        "_storm_since",
        "_admitted_since_refusal",
        "_admitted_since_cut",
        "_rounds",
        "_updated_at",
        "_ceiling",
        "_capped_at",
        "_capped_limits",
        "cuts",
    )

    def __init__(self, *, requests_ceiling_known: bool, now: float) -> None:
        self._requests = _Cap()
        self._tokens = _Cap()
        self._output_tokens = _Cap()
        #: Slow start runs until the first cut, and only where nothing bounds the request rate.
        self._slow_start = not requests_ceiling_known
        #: Smoothed seconds from sending to an admitted answer, and its smoothed mean deviation.
        self._round_trip: float | None = None
        self._round_trip_deviation = 0.0
        #: What an answer holds on average (smoothed): to turn token limits into requests.
        self._mean_tokens = 0.0
        self._mean_output_tokens = 0.0
        #: When the first request went out (None: not yet), and whether any was refused for the rate limit.
        self._first_sent: float | None = None
        self._refused = False
        #: Recent answers (to measure what the server admitted), and the sends of the last second.
        self._answers: deque[_Sample] = deque(maxlen=HISTORY_ANSWERS)
        self._sends: deque[float] = deque()
        #: Send times of the requests in flight: a count per time, and a heap to find the oldest.
        self._in_flight: Counter[float] = Counter()
        self._in_flight_heap: list[float] = []
        self._in_flight_count = 0
        self._window = float(INITIAL_WINDOW)
        #: When the last cut happened: only a 429 to a request sent after it cuts again.
        self._last_cut = -math.inf
        #: Recent pauses, (from, until), oldest first: not sending time.
        self._pauses: deque[tuple[float, float]] = deque()
        self._paused_until = -math.inf
        #: The send time of the last refused request, and the admitted answers since the last refusal.
        self._last_refusal_sent = -math.inf
        #: The send time of the first refused request of the current storm (refusals closer than a calm spell).
        self._storm_since = -math.inf
        self._admitted_since_refusal = 0
        self._admitted_since_cut = 0
        #: Rounds of refusals in a row: a 429 to a request sent after the last pause ended starts a new one.
        self._rounds = 0
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
        return (
            f"RateController(requests={self._requests.per_second:.3g}/s, tokens={self._tokens.per_second:.3g}/s, "
            f"cuts={self.cuts}, slow_start={self._slow_start})"
        )

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
        if self._round_trip is not None and (self._refused or doublings >= 40):
            return max(self._window, self.needed_in_flight(now))
        grown = INITIAL_WINDOW * math.pow(2.0, min(40.0, doublings))
        if not self._refused:
            # Nothing has said the ceiling is wrong, nor that it is right: a ceiling of nonsense (a limit told 1e9)
            # is let out at most as fast as time grows the window, however short the latency.
            return max(self._window, min(grown, self.needed_in_flight(now)) if self._round_trip is not None else grown)
        if math.isfinite(self.requests_per_second()):
            # Refused, so the rate is now paced by a cut to what we were sending; only the latency is unknown.
            return max(self._window, grown)
        return self._window

    def needed_in_flight(self, now: float) -> float:
        """Requests in flight that hold the rate in force at the latency seen: R x (latency + 4 deviations), the
        latency at least the age of the oldest request still in flight (answers slower than any seen so far
        must not throttle the rate). 0 until an admitted answer has told the latency; math.inf when nothing
        bounds the rate."""
        if self._round_trip is None:
            return 0.0
        rate = self.requests_per_second()
        if not math.isfinite(rate):
            return math.inf
        latency = self._round_trip + LATENCY_DEVIATIONS * self._round_trip_deviation
        if self._in_flight_heap:
            latency = max(latency, now - self._in_flight_heap[0])
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
        interval = 1.0 / cap if math.isfinite(cap) and cap > 0 else self._round_trip_or_default()
        return max(MIN_HINTLESS_PAUSE, interval) * 2.0 ** max(0, self._rounds - 1)

    def report(self) -> ControlReport:
        """Where the limits appear to be: what the server admitted over the long run at the last cut (a long
        window averages out its burst allowance and our probing above it), else the last measurement."""
        found_requests = self._requests.long_run if self._requests.long_run is not None else self._requests.found
        found_tokens = self._tokens.long_run if self._tokens.long_run is not None else self._tokens.found
        found_output = self._output_tokens.long_run if self._output_tokens.long_run is not None else self._output_tokens.found
        return ControlReport(
            self.cuts,
            found_requests * 60 if found_requests is not None else None,
            found_tokens * 60 if found_tokens is not None else None,
            found_output * 60 if found_output is not None else None,
        )

    # -- what happened ------------------------------------------------------------------------------

    def sent(self, now: float) -> None:
        """A request went out."""
        self._sends.append(now)
        if self._first_sent is None:
            self._first_sent = now
        self._forget_sends(now)
        self._in_flight[now] += 1
        self._in_flight_count += 1
        heapq.heappush(self._in_flight_heap, now)

    def lost(self, sent_at: float) -> None:
        """An attempt ended with nothing to learn from (no answer, a 5xx): it is no longer in flight."""
        self._landed(sent_at)

    def paused(self, now: float, until: float) -> None:
        """Nobody sends from `now` until `until` (a 429's pause): that time grows nothing and measures nothing."""
        if until <= now:
            return
        if self._pauses and now <= self._pauses[-1][1]:
            start, end = self._pauses.pop()
            self._pauses.append((start, max(end, until)))
        else:
            self._pauses.append((now, until))
        while self._pauses and self._pauses[0][1] < now - HISTORY_SECONDS:
            self._pauses.popleft()
        self._paused_until = max(self._paused_until, until)

    def answered(self, answer: Answer, now: float) -> None:
        """An answer from the server arrived. (No answer at all, or a 5xx, tells nothing: report it as `lost`.)"""
        self._landed(answer.sent_at)
        after_the_pause = answer.sent_at > self._paused_until
        self._answers.append(_Sample(answer.sent_at, answer.tokens, not answer.rate_limited, answer.output_tokens))
        while self._answers and self._answers[0].sent_at < now - HISTORY_SECONDS:
            self._answers.popleft()
        if answer.rate_limited:
            self._slow_start_growth(now)
        else:
            latency = now - answer.sent_at
            if self._round_trip is not None:
                self._round_trip_deviation += ROUND_TRIP_WEIGHT * (abs(latency - self._round_trip) - self._round_trip_deviation)
            self._round_trip = _smoothed(self._round_trip, latency)
            self._mean_tokens += SIZE_WEIGHT * (answer.tokens - self._mean_tokens) if self._mean_tokens else answer.tokens
            self._mean_output_tokens += SIZE_WEIGHT * (answer.output_tokens - self._mean_output_tokens) if self._mean_output_tokens else answer.output_tokens
            self._slow_start_growth(now)  # after the round trip: the first answer in starts the rate from it
            # Admitted though sent after a refusal, or admitted several times in a row: the storm is over.
            if answer.sent_at > self._last_refusal_sent or self._admitted_since_refusal >= STORM_OVER_ANSWERS:
                self._rounds = 0
            self._admitted_since_refusal += 1
            self._admitted_since_cut += 1
            if self._in_flight_count + 1 >= self._window / 2:  # the window is in use: it may grow
                self._window += 1
            if not self._slow_start and self._capped() and self._using_the_rate(now):
                acceleration = 1 + self._admitted_since_cut / ACCELERATION
                per_second = self._answers_per_second()
                self._requests.grow(acceleration, per_second)
                self._tokens.grow(acceleration, per_second)
                self._output_tokens.grow(acceleration, per_second)
            return
        if answer.explained:
            return  # the server's bucket, empty at the limit it states: its hint pauses us, nothing is cut
        self._refused = True
        if after_the_pause or self._rounds == 0:
            self._rounds += 1
        # Lone: no other request of the last `CALM_ANSWERS` sent (at the current rate) was refused. (Counted
        # by send time: admitted answers lag refusals by the server's latency, and keep coming during a pause.)
        rate = min(self._requests.per_second, self._requests.ceiling)
        calm = CALM_ANSWERS / rate if math.isfinite(rate) and rate > 0 else 0.0
        after_calm = answer.sent_at - self._last_refusal_sent >= calm
        if after_calm:
            self._storm_since = answer.sent_at
        lone = after_calm and self._admitted_since_refusal >= CALM_ANSWERS
        self._last_refusal_sent = max(self._last_refusal_sent, answer.sent_at)
        self._admitted_since_refusal = 0
        if answer.sent_at > self._last_cut:
            if answer.on_output_tokens:
                self._cut(self._output_tokens, _OUTPUT_TOKENS, lone, now)
            elif answer.on_tokens:
                self._cut(self._tokens, _TOKENS, lone, now)
            else:
                self._cut(self._requests, _REQUESTS, lone, now)

    # -- the loop -----------------------------------------------------------------------------------

    def _cut(self, cap: _Cap, measure: _Measure, lone: bool, now: float) -> None:
        """Send at just below what the server admitted since the refusals began, in the 429's dimension
        (`cap`, counted by `measure`)."""
        # Requests sent before the oldest one in flight have all their answers in: only they are counted,
        # since refusals come back at once and admitted answers only after the server's latency.
        until = self._in_flight_heap[0] if self._in_flight_heap else now
        # Only since the storm began: before it, the server's burst allowance admitted more than its rate.
        resolved = sorted(
            (sample for sample in self._answers if self._storm_since <= sample.sent_at < until), key=lambda sample: sample.sent_at
        )
        recent = resolved[-2 * MIN_SAMPLES :]
        if resolved and len(resolved) > len(recent):  # at a fast rate, a second's worth rather than a handful
            last_second = [sample for sample in resolved if sample.sent_at >= resolved[-1].sent_at - 1.0]
            recent = last_second if len(last_second) > len(recent) else recent
        sending = self._sending(recent, cap, measure, now)
        admitted = _rate_of([sample for sample in recent if sample.admitted], self._pauses, measure, span_of=recent)
        refusals = sum(not sample.admitted for sample in recent)
        if self._slow_start:  # the rate has just doubled past the limit: back to where it was (answers in are older)
            cap.cut_to(FALLBACK_CUT * min(cap.per_second, cap.ceiling))
        elif len(recent) >= MIN_SAMPLES and refusals and admitted:  # a storm we can measure
            cap.found = admitted
            # Refused again after the pause, nothing admitted between: far too fast, whatever the measurement says.
            most = FALLBACK_CUT if self._rounds >= 2 else LONE_CUT
            cap.cut_to(min(most * sending, max(MIN_CUT * sending, TARGET * admitted)))
        elif self._rounds >= 2 or self._round_trip is None:  # refused again after the pause, or before any admission: far too fast
            cap.cut_to(FALLBACK_CUT * sending)
        else:  # one refusal, nothing to measure yet: a little too fast
            if lone and math.isfinite(sending) and sending >= PRESSING * min(cap.per_second, cap.ceiling):
                cap.found = sending  # we crept over the limit: it is about what we were sending
            cap.cut_to(LONE_CUT * sending)
        self._slow_start = False
        self._last_cut = now
        self._admitted_since_cut = 0
        # Halve the window, but leave room for the rate just set: at a long latency, many are in flight at once.
        sustain = 2 * self._requests.per_second * self._round_trip_or_default() if math.isfinite(self._requests.per_second) else 0.0
        self._window = max(1.0, min(self._window, self._in_flight_count + 1) / 2, sustain)
        self.cuts += 1
        history = [sample for sample in self._answers if sample.sent_at < until]
        first = min((sample.sent_at for sample in history), default=until)  # answers come in any order at a long latency
        if cap.found is not None and until - first >= LONG_RUN_SECONDS:
            long_run = sum(measure(sample) for sample in history if sample.admitted) / (until - first)
            # Only a long run spent pressing the limit measures it: one the window or the latency held down does not.
            if long_run >= PRESSING * cap.found:
                cap.long_run = long_run

    def _sending(self, recent: list[_Sample], cap: _Cap, measure: _Measure, now: float) -> float:
        """The rate we are sending at, per second: from the latest sends (answers in tell of older rates, after
        a long latency), else from the answers, else the cap itself."""
        samples = [_Sample(at, 0, True) for at in self._sends]
        measured = _rate_of(samples, self._pauses, _REQUESTS) if len(samples) >= MIN_SAMPLES else None
        if measured is not None and measure is not _REQUESTS:  # requests sent per second, times what each holds
            measured *= sum(measure(sample) for sample in self._answers) / len(self._answers) if self._answers else 0.0
        if measured is None and len(recent) >= MIN_SAMPLES:
            measured = _rate_of(recent, self._pauses, measure)
        if measured is None and self._sends:
            # Too few sends, or all at once, to measure a rate: what went out over the last second at least is known.
            per_request = sum(measure(sample) for sample in self._answers) / len(self._answers) if self._answers else 1.0
            span = max(1.0, now - self._sends[0])
            measured = len(self._sends) / span * per_request
        if measured is None:
            measured = min(cap.per_second, cap.ceiling)
        return min(measured, cap.per_second, cap.ceiling)

    def _capped(self) -> bool:
        """Some cap of ours is below the ceiling (else the ceiling alone applies, and nothing grows)."""
        return not (math.isinf(self._requests.per_second) and math.isinf(self._tokens.per_second) and math.isinf(self._output_tokens.per_second))

    def _slow_start_growth(self, now: float) -> None:
        """In slow start, double the rate every `SLOW_START_DOUBLING` seconds of sending."""
        if not self._slow_start:
            self._updated_at = now
            return
        sending = max(0.0, now - max(self._updated_at, min(now, self._paused_until)))
        self._updated_at = now
        if math.isinf(self._requests.per_second):
            if self._round_trip is not None:  # the first answer is in: start from a round trip's worth
                self._requests.per_second = INITIAL_REQUESTS_PER_ROUND_TRIP / max(self._round_trip, 1e-3)
            return
        if sending <= 0 or not self._using_the_rate(now):
            return
        # At most one doubling per update: answers can come in bunches after a long latency.
        fastest, slowest = SLOW_START_DOUBLING
        doubling = min(slowest, max(fastest, self._round_trip_or_default()))
        self._requests.per_second *= 2.0 ** min(1.0, sending / doubling)

    def _using_the_rate(self, now: float) -> bool:
        """We send at half our request cap or more (an uncapped rate is used by definition)."""
        if math.isinf(self._requests.per_second):
            return True
        self._forget_sends(now)
        # What is kept is the last second's sends and at most `2 x MIN_SAMPLES` older ones: count those off
        # the front rather than walk a second's worth of sends on every answer.
        older = 0
        for at in self._sends:
            if at >= now - 1.0:
                break
            older += 1
        return len(self._sends) - older >= 0.5 * self._requests.per_second

    def _forget_sends(self, now: float) -> None:
        """Keep the sends of the last second, and at least the last `2 x MIN_SAMPLES` (from the last minute)."""
        sends = self._sends
        while sends and sends[0] < now - 1.0 and (len(sends) > 2 * MIN_SAMPLES or sends[0] < now - HISTORY_SECONDS):
            sends.popleft()

    def _answers_per_second(self) -> float:
        rate = self.requests_per_second()
        return rate if math.isfinite(rate) else 0.0

    def _round_trip_or_default(self) -> float:
        return self._round_trip if self._round_trip is not None else DEFAULT_ROUND_TRIP

    def _landed(self, sent_at: float) -> None:
        """The request sent at `sent_at` is no longer in flight."""
        if sent_at in self._in_flight:
            self._in_flight_count -= 1
        remaining = self._in_flight[sent_at] - 1
        if remaining > 0:
            self._in_flight[sent_at] = remaining
        else:
            self._in_flight.pop(sent_at, None)
        heap = self._in_flight_heap
        while heap and heap[0] not in self._in_flight:
            heapq.heappop(heap)


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
