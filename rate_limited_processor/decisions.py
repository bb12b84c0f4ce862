"""What to do after an attempt: the one pure step between a classified outcome and the loop's action.

Usage::

    decision = classify(outcome)                                  # what the answer means
    step = next_step(decision, job=job_state, run=run_state, policy=policy)
    match step:
        case Succeed(): ...   case Fail(): ...   case Retry(delay, pause): ...   case StopRun(reason): ...

`classify` (in `retry_policy`) reads one answer; `next_step` adds what only the run knows: how many
attempts this request has had, and whether the run is stopping. The loop carries the step out and
decides nothing itself. Pure: no I/O, no clock; the jitter's random source can be passed in.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from .retry_policy import Decision, RetryPolicy, Verdict

__all__ = ["Succeed", "Fail", "Retry", "StopRun", "Step", "JobState", "RunState", "next_step"]


@dataclass(frozen=True, slots=True)
class Succeed:
    """Write the answer."""


@dataclass(frozen=True, slots=True)
class Fail:
    """Record the request as failed, with the errors of all its attempts."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Send this request again after `delay` seconds."""

    delay: float
    #: Every sender pauses this long first (a rate-limit 429); None when only this request waits.
    pause_everyone: float | None = None


@dataclass(frozen=True, slots=True)
class StopRun:
    """This request cannot finish now and neither can the rest: leave it unwritten for a rerun, and stop.

    Also the step for a request that would be retried while the run is already stopping.
    """

    reason: str


Step = Succeed | Fail | Retry | StopRun


@dataclass(frozen=True, slots=True)
class JobState:
    """What the run knows about one request after an attempt."""

    #: Attempts made, this one included.
    attempts: int


@dataclass(frozen=True, slots=True)
class RunState:
    """What the run as a whole knows when an answer arrives."""

    #: Stopping: take nothing new, retry nothing, finish what is in flight.
    stopping: bool = False


def next_step(
    decision: Decision,
    *,
    job: JobState,
    run: RunState,
    policy: RetryPolicy,
    random: Callable[[], float] = random.random,
) -> Step:
    """The step for this request after this attempt, one rule per line, first match wins."""
    # The API answered: done.
    if decision.verdict is Verdict.SUCCESS:
        return Succeed()
    # A bad key or an empty account fails every request the same way.
    if decision.verdict is Verdict.STOP_RUN:
        return StopRun(f"{decision.reason} (every remaining request would fail the same way)")
    # A wait of hours (a daily quota) is a reason to come back later, not to sit idle.
    if policy.waits_too_long(decision):
        return StopRun(f"{decision.reason} (the API asks to wait longer than {policy.max_server_wait:g}s; rerun later)")
    retryable = decision.verdict is Verdict.RETRY and job.attempts < policy.max_attempts
    # Stopping: whatever would be retried is left for the rerun.
    if retryable and run.stopping:
        return StopRun("the run is stopping")
    if retryable:
        return Retry(policy.retry_delay(decision, job.attempts, random=random), policy.pause_for(decision))
    return Fail()
