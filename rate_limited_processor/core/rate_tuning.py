"""The rate controller's constants, each with why it is what it is (see `rate_control`'s docstring for the loop
they tune)."""

from __future__ import annotations

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
#: With no limit known, the first request goes alone: its answer's headers tell the limits. When that answer has
#: not come after this many seconds (a reasoning model's takes 30), the others start anyway, at
#: `OVERDUE_START_RATE` requests a second doubling every `SLOW_START_DOUBLING[1]` seconds: time, not the first
#: round trip, is the clock. The first 429 (at once, whatever the latency) or answer then tells the limits.
FIRST_ANSWER_PATIENCE = 2.0
OVERDUE_START_RATE = 1.0
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
