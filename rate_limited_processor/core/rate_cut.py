"""The cut: on a rate-limit 429, what the server admitted since the refusals began, and the cap that follows
from it (`rate_control`'s docstring says why: decrease to what the server admitted, once per episode).

Pure: functions of the samples, the sends and the pauses the controller keeps (`rate_measure`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

from .rate_measure import _REQUESTS, _Cap, _Measure, _rate_of, _Sample
from .rate_tuning import FALLBACK_CUT, LONE_CUT, LONG_RUN_SECONDS, MIN_CUT, MIN_SAMPLES, PRESSING, TARGET


def storm_samples(answers: Iterable[_Sample], since: float, until: float) -> list[_Sample]:
    """The answers a cut measures: of the requests sent since the storm began (before it, the server's burst
    allowance admitted more than its rate) and before `until`, the oldest still in flight (so all their answers
    are in: refusals come back at once, admissions only after the latency), the last `2 x MIN_SAMPLES`, or the
    last second's when that is more (at a fast rate, a second's worth rather than a handful)."""
    resolved = sorted((sample for sample in answers if since <= sample.sent_at < until), key=lambda sample: sample.sent_at)
    recent = resolved[-2 * MIN_SAMPLES :]
    if resolved and len(resolved) > len(recent):
        last_second = [sample for sample in resolved if sample.sent_at >= resolved[-1].sent_at - 1.0]
        recent = last_second if len(last_second) > len(recent) else recent
    return recent


def sending_rate(
    recent: list[_Sample], sends: deque[float], answers: deque[_Sample], pauses: deque[tuple[float, float]], cap: _Cap, measure: _Measure, now: float,
) -> float:
    """The rate we are sending at, per second: from the latest sends (answers in tell of older rates, after
    a long latency), else from the answers, else the cap itself."""
    samples = [_Sample(at, 0, True) for at in sends]
    measured = _rate_of(samples, pauses, _REQUESTS) if len(samples) >= MIN_SAMPLES else None
    if measured is not None and measure is not _REQUESTS:  # requests sent per second, times what each holds
        measured *= sum(measure(sample) for sample in answers) / len(answers) if answers else 0.0
    if measured is None and len(recent) >= MIN_SAMPLES:
        measured = _rate_of(recent, pauses, measure)
    if measured is None and sends:
        # Too few sends, or all at once, to measure a rate: what went out over the last second at least is known.
        per_request = sum(measure(sample) for sample in answers) / len(answers) if answers else 1.0
        span = max(1.0, now - sends[0])
        measured = len(sends) / span * per_request
    if measured is None:
        measured = min(cap.per_second, cap.ceiling)
    return min(measured, cap.per_second, cap.ceiling)


def cut(
    cap: _Cap, recent: list[_Sample], sending: float, pauses: deque[tuple[float, float]], measure: _Measure, *,
    slow_start: bool, rounds: int, round_trip_known: bool, lone: bool,
) -> None:
    """Lower `cap` to just below what the server admitted among `recent` (counted by `measure`), or by a fixed
    fraction of what we were `sending` when that cannot be measured."""
    admitted = _rate_of([sample for sample in recent if sample.admitted], pauses, measure, span_of=recent)
    refusals = sum(not sample.admitted for sample in recent)
    if slow_start:  # the rate has just doubled past the limit: back to where it was (answers in are older)
        cap.cut_to(FALLBACK_CUT * min(cap.per_second, cap.ceiling))
    elif len(recent) >= MIN_SAMPLES and refusals and admitted:  # a storm we can measure
        cap.found = admitted
        # Refused again after the pause, nothing admitted between: far too fast, whatever the measurement says.
        most = FALLBACK_CUT if rounds >= 2 else LONE_CUT
        cap.cut_to(min(most * sending, max(MIN_CUT * sending, TARGET * admitted)))
    elif rounds >= 2 or not round_trip_known:  # refused again after the pause, or before any admission: far too fast
        cap.cut_to(FALLBACK_CUT * sending)
    else:  # one refusal, nothing to measure yet: a little too fast
        if lone and math.isfinite(sending) and sending >= PRESSING * min(cap.per_second, cap.ceiling):
            cap.found = sending  # we crept over the limit: it is about what we were sending
        cap.cut_to(LONE_CUT * sending)


def long_run_rate(answers: Iterable[_Sample], until: float, measure: _Measure, found: float | None) -> float | None:
    """What the server admitted over the whole remembered history before `until`, when that spans at least
    `LONG_RUN_SECONDS` spent pressing the limit `found` (one the window or the latency held down measures nothing);
    else None."""
    history = [sample for sample in answers if sample.sent_at < until]
    first = min((sample.sent_at for sample in history), default=until)  # answers come in any order at a long latency
    if found is None or until - first < LONG_RUN_SECONDS:
        return None
    long_run = sum(measure(sample) for sample in history if sample.admitted) / (until - first)
    return long_run if long_run >= PRESSING * found else None
