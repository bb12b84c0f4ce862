"""What to do after an attempt: the one pure step between a classified outcome and the loop's action.

Usage::

    decision = classify(outcome)                                  # what the answer means
    step = next_step(decision, job=job_state, run=run_state, policy=policy)
    match step:
        case Succeed(): ...   case Fail(): ...   case Retry(delay, pause): ...   case StopRun(reason): ...

`classify` (in `retry_policy`) reads one answer; `next_step` adds what only the run knows: how many
attempts this request has had and how long it has waited on rate limits, whether anything has succeeded
yet, how long a hint-less pause should be, and whether the run is stopping. The loop carries the step
out and decides nothing itself. Three rules matter most:

* **A rate-limit 429 costs no attempt.** It is the server saying "not now", not a failed request: the
  request waits out the pause and goes again, however often, bounded by time instead
  (`RetryPolicy.max_rate_limited_wait`, 15 minutes): past that the run stops for a rerun.
* **No capacity is not a rate limit.** A 429 that says the provider has no capacity now (OpenAI Flex's
  `resource_unavailable`) costs no attempt either: this request alone backs off exponentially (the server's hint
  when it gives one), nobody else pauses, and the rate is not cut; bounded by the same time as rate limits.
* **A failure about the endpoint stops the run while nothing has succeeded.** Connection refused, a name
  that does not resolve, a TLS failure, a 404 or 405 on the path: if no request has succeeded yet, such a
  failure is retried with the usual backoff (a server that comes up a few seconds late is not a reason to
  stop), and when its attempts are used up the run stops with exit 3, naming the URL and the cause, and
  records nothing for the request, so a rerun at the right URL sends every line. Once anything has
  succeeded, the same failure is about the line and is recorded as usual.
* **A refused account is dropped, not the run.** With several accounts (`Settings.accounts`), an answer
  that would stop the run (a bad key, no quota, a wait of hours) drops the account that got it, and the
  request goes again through another, at no cost of an attempt. The run stops when the last one goes.
* **An outage is the run's, not the line's.** Once something has succeeded, a request that gets no answer at
  all, when no request has been answered since it was sent (the third such attempt in a row, or later), meets a
  server that has gone away for everyone:
  it is probed again, alone and at no cost of an attempt, with the others waiting, and past
  `RetryPolicy.max_outage` the run stops for a rerun. No failure row is written for an outage.
* **Stopping means no retries**: whatever would be retried is left for the rerun.

Pure: no I/O, no clock; the jitter's random source can be passed in.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from ..base.records import record
from .retry_policy import Decision, RetryPolicy, Verdict

__all__ = ["Succeed", "Fail", "Retry", "Probe", "StopRun", "DropAccount", "Step", "JobState", "RunState", "next_step"]


@record
class Succeed:
    """Write the answer."""


@record
class Fail:
    """Record the request as failed, with the errors of all its attempts."""


@record
class Retry:
    """Send this request again after `delay` seconds."""

    delay: float
    #: Every sender pauses this long first (a rate-limit 429); None when only this request waits.
    pause_everyone: float | None = None
    #: A rate-limit 429: it used no attempt, and is not an error of the request's.
    rate_limited: bool = False
    #: A no-capacity 429 (Flex): it used no attempt, and only this request waits.
    no_capacity: bool = False


@record
class Probe:
    """The server answers nobody (an outage, not this request's failure): send this request again after `delay`
    seconds, alone, at no cost of an attempt; everyone else waits for its answer."""

    delay: float


@record
class StopRun:
    """This request cannot finish now and neither can the rest: leave it unwritten for a rerun, and stop.

    Also the step for a request that would be retried while the run is already stopping.
    """

    reason: str


@record
class DropAccount:
    """The account this attempt went through is unusable (its key, its quota): take it out of the run, and
    send the request again through another at no cost of an attempt."""

    reason: str


Step = Succeed | Fail | Retry | Probe | StopRun | DropAccount
# Enum members read per request, as globals: on Python 3.11 reading one off its class (EnumType's __getattr__ hook) costs a few times more.
_SUCCESS = Verdict.SUCCESS


@dataclass(slots=True)  # not frozen: one is made per request, and a frozen one costs a call per field
class JobState:
    """What the run knows about one request after an attempt."""

    #: Attempts that count against `max_attempts`, this one included: every attempt but rate-limit 429s.
    attempts: int
    #: Seconds since this request's first rate-limit or no-capacity 429 (0 when it has had none).
    rate_limited_for: float = 0.0
    #: No-capacity 429s this request has had, this one included: its backoff grows with them.
    no_capacity: int = 0
    #: Where it was sent, for a message about the endpoint.
    url: str = ""


@dataclass(slots=True)  # not frozen: one is made per request, and a frozen one costs a call per field
class RunState:
    """What the run as a whole knows when an answer arrives."""

    #: Stopping: take nothing new, retry nothing, finish what is in flight.
    stopping: bool = False
    #: Some request has succeeded: the endpoint works, and a failure is about its line.
    any_succeeded: bool = True
    #: How long everyone pauses after a rate-limit 429 without a hint (from `rate_control`).
    hintless_pause: float = 1.0
    #: Accounts still in use; with more than one, an account-wide refusal drops only the account.
    accounts_left: int = 1
    #: Seconds the server has answered nobody, when this attempt too got no answer and none came since it was sent:
    #: an outage of the whole run, not this request's failure. None otherwise.
    outage_for: float | None = None


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
    if decision.verdict is _SUCCESS:
        return Succeed()
    # A bad key or an empty account fails every request the same way: through this account.
    if decision.verdict is Verdict.STOP_RUN:
        if run.accounts_left > 1 and not run.stopping:
            return DropAccount(decision.reason)
        return StopRun(f"{decision.reason} (every remaining request would fail the same way)")
    # A wait of hours (a daily quota) is a reason to come back later, not to sit idle.
    if policy.waits_too_long(decision):
        if run.accounts_left > 1 and not run.stopping:
            return DropAccount(f"{decision.reason} (the API asks to wait longer than {policy.max_server_wait:g}s)")
        return StopRun(f"{decision.reason} (the API asks to wait longer than {policy.max_server_wait:g}s; rerun later)")
    # Stopping: whatever would be tried again is left for the rerun.
    if run.stopping and (decision.verdict is Verdict.RETRY or decision.about_the_endpoint):
        return StopRun("the run is stopping")
    # No capacity now (Flex): no attempt used; this request alone backs off, the rate stays.
    if decision.no_capacity:
        if job.rate_limited_for > policy.max_rate_limited_wait:
            return StopRun(f"{decision.reason} (a request has waited over {policy.max_rate_limited_wait:g}s for capacity; rerun later)")
        return Retry(policy.retry_delay(decision, max(1, job.no_capacity), random=random), no_capacity=True)
    # Rate limited: no attempt used; wait out the pause (the server's hint, else about a round trip).
    if decision.rate_limited:
        if job.rate_limited_for > policy.max_rate_limited_wait:
            return StopRun(f"{decision.reason} (a request has waited over {policy.max_rate_limited_wait:g}s on rate limits; rerun later)")
        pause = policy.pause_for(decision, run.hintless_pause) or 0.0
        return Retry(pause, pause_everyone=pause, rate_limited=True)
    attempts_left = job.attempts < policy.max_attempts
    # Nothing has worked yet and the failure is about the URL: retry with backoff, then stop the run.
    if decision.about_the_endpoint and not run.any_succeeded:
        if attempts_left:
            return Retry(policy.backoff(job.attempts, random=random))
        return StopRun(
            f"{decision.reason}: every request to {job.url} so far failed like this and none succeeded, so the "
            "run stopped without recording them; fix the URL or the server and rerun"
        )
    # The server answers nobody: not this line's failure. Probe, alone, backing off with the outage; stop past the bound.
    if run.outage_for is not None:
        if run.outage_for > policy.max_outage:
            return StopRun(
                f"{decision.reason}: the server has answered no request for {run.outage_for:.0f}s (an outage), so the run stopped "
                "without recording the requests it left; rerun when the server is back"
            )
        return Probe(min(policy.max_delay, max(policy.initial_delay, run.outage_for / 4)))
    if decision.verdict is Verdict.RETRY and attempts_left:
        return Retry(policy.retry_delay(decision, job.attempts, random=random))
    return Fail()
