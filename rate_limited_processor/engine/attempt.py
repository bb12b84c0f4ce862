"""One attempt of a request: send -> outcome -> decision -> step, and one handler per step.

`send` goes through the transport; `classify` reads the answer (the decision); the run learns from it
(`feedback.py`); `next_step` (pure) says what to do: succeed, fail, retry after a delay (a rate-limit 429 also
pauses every sender through the lane), probe a server that answers nobody, drop an account, or stop the run. The
handlers carry the step out and decide nothing themselves.
"""

from __future__ import annotations

import asyncio
import logging
import traceback

from ..base.errors import NoAnswer, TransportError
from ..base.models import AttemptTiming, RequestResult, ResultKind
from ..core.budget import Budget
from ..core.decisions import DropAccount, Fail, Probe, Retry, RunState, Step, StopRun, Succeed, next_step
from ..core.retry_policy import Decision, HTTPOutcome, Verdict, classify
from ..providers.endpoints import likely_url
from ..providers.registry import FLEX_REQUEST_TIMEOUT, is_flex
from ..transport.http import Transport, TransportRequest, outcome_of, outcome_of_error
from ..transport.streaming import STREAMED_ENDPOINTS, streamed_body
from .context import RunContext
from .feedback import Feedback
from .gates import Slots
from .job import Job
from .lanes import Lane

__all__ = ["Attempts"]

logger = logging.getLogger("rate_limited_processor")

# Enum members read per request, as globals: on Python 3.11 reading one off its class (EnumType's __getattr__ hook) costs a few times more.
_SUCCESS, _SUCCEEDED = Verdict.SUCCESS, ResultKind.SUCCEEDED


class Attempts:
    """Makes the attempts of a run, each in a task of its own (`run`)."""

    __slots__ = ("_run", "_feedback", "_slots", "_transport", "_budget")

    def __init__(self, run: RunContext, feedback: Feedback, slots: Slots, transport: Transport, budget: Budget | None) -> None:
        self._run = run
        self._feedback = feedback
        self._slots = slots
        self._transport = transport
        self._budget = budget

    async def run(self, job: Job) -> None:
        """One attempt of `job`, through the lane and with the slot the feeder's gates gave it; both given back at the end."""
        run = self._run
        try:
            await self._once(job)
        except Exception as error:  # a bug of ours must not lose the request silently, nor a paid answer
            await run.deliver(self._internal_error(job, error))
        finally:
            if job.lane is not None:
                job.lane.ended()
            self._slots.release()
            task = asyncio.current_task()
            if task is not None:
                run.in_flight.discard(task)
            run.changed.set()

    async def _once(self, job: Job) -> None:
        """Send once, classify the answer, learn from it, and carry out the step `next_step` chooses."""
        lane = job.lane
        assert lane is not None
        sent = await self._send(job, lane)
        if sent is None:
            return
        outcome, started = sent
        decision, now, outage_for = self._decision(job, lane, outcome, started)
        if not await self._feedback.learn(job, lane, outcome, decision, now) and decision.verdict is not _SUCCESS:
            return  # the limiter failed and the run stops; a success is still kept
        run = self._run
        lanes = run.lanes
        # An answer from an account already dropped (it was in flight) is about that account: the rest are left.
        accounts_left = lanes.accounts_left + lanes.is_dropped(lane.account.name)
        state = RunState(
            stopping=run.stopping, any_succeeded=run.health.any_succeeded, hintless_pause=lane.control.hintless_pause(),
            accounts_left=accounts_left, outage_for=outage_for,
        )
        step = next_step(decision, job=job.state(now), run=state, policy=run.settings.retry)
        await self._carry_out(step, job, lane, outcome, decision, started)

    async def _send(self, job: Job, lane: Lane) -> tuple[HTTPOutcome, float] | None:
        """The attempt goes out; its outcome, and when it was sent. None if the transport broke (the run stops)."""
        run = self._run
        settings = run.settings
        job.attempts += 1
        run.stats.record_attempt(job.tokens, is_retry=job.attempts > 1)
        if logger.isEnabledFor(logging.INFO):  # the default level logs nothing per request: build no arguments for it
            logger.info("%s: sending, attempt %d/%d, ~%d tokens", job.request.name, job.attempts, settings.retry.max_attempts, job.tokens)
        stream = settings.stream and job.endpoint in STREAMED_ENDPOINTS
        body = streamed_body(job.endpoint, job.request.body) if stream else job.request.body
        # Flex answers queue: its guide gives them 15 minutes (a longer timeout of the user's stands).
        timeout = max(settings.request_timeout, FLEX_REQUEST_TIMEOUT) if is_flex(body) else settings.request_timeout
        request = TransportRequest(job.url, body, lane.headers, timeout, stream=stream)
        started = run.now()
        try:
            response = await self._transport.send(request)
        except TransportError as error:
            job.received = None
            return outcome_of_error(error, run.scrub), started
        except Exception as error:  # not "no answer" (that is TransportError): a bug in the transport
            self._transport_failed(error)
            return None
        job.received = response.timings
        return outcome_of(response, run.scrub), started

    def _decision(self, job: Job, lane: Lane, outcome: HTTPOutcome, started: float) -> tuple[Decision, float, float | None]:
        """What the answer means, and the counts it moves: the budget, the stats, the lane's, the job's and the run's
        health. With when it ended, and how long the server has answered nobody (an outage; else None)."""
        run = self._run
        decision = classify(outcome, endpoint=job.endpoint)
        succeeded = decision.verdict is _SUCCESS
        if succeeded:
            job.answer = outcome
        budget = self._budget
        if budget is not None:
            answered = outcome.status is not None
            budget.settle(job.cost, budget.actual(job.request.body, job.cost, answer=outcome.body, succeeded=succeeded, answered=answered))
            job.cost = 0.0
        now = run.now()
        ended = outcome.status if outcome.status is not None else outcome.no_answer.value if outcome.no_answer is not None else "no answer"
        job.attempt_log.append(AttemptTiming(started, now, ended, decision.rate_limited))
        run.stats.record_answer(now, rate_limited=decision.rate_limited, took=now - started, no_capacity=decision.no_capacity)
        lane.answered(succeeded=succeeded, rate_limited=decision.rate_limited)
        if decision.rate_limited:
            job.rate_limited_at(now)
        elif decision.no_capacity:
            job.no_capacity_at(now)
        outage_for = run.health.observe(
            succeeded=succeeded, about_the_endpoint=decision.about_the_endpoint, answered=outcome.status is not None,
            started=started, now=now, reason=decision.reason,
        )
        return decision, now, outage_for

    async def _carry_out(self, step: Step, job: Job, lane: Lane, outcome: HTTPOutcome, decision: Decision, started: float) -> None:
        reason = self._run.scrub(decision.reason) if not isinstance(step, Succeed) else ""
        match step:
            case Succeed():
                await self._succeed(job, outcome, started)
            case Fail():
                await self._fail(job, outcome, reason)
            case Retry(delay=delay, pause_everyone=pause, rate_limited=True):
                await self._retry_rate_limited(job, lane, reason, delay, pause)
            case Retry(delay=delay, no_capacity=True):
                self._retry_no_capacity(job, reason, delay)
            case Retry(delay=delay):
                self._retry(job, reason, delay)
            case Probe(delay=delay):
                self._probe(job, reason, delay)
            case DropAccount(reason=why):
                self._drop_account(job, lane, why)
            case StopRun(reason=why):
                self._stop_run(job, outcome, decision, why)

    # -- one handler per step -------------------------------------------------------------------------

    async def _succeed(self, job: Job, outcome: HTTPOutcome, started: float) -> None:
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s: succeeded on attempt %d in %.2fs", job.request.name, job.attempts, self._run.now() - started)
        result = job.result(outcome, _SUCCEEDED)
        job.answer = None
        await self._run.deliver(result)

    async def _fail(self, job: Job, outcome: HTTPOutcome, reason: str) -> None:
        job.errors.append(reason)
        logger.error("%s: failed after %d attempt(s): %s", job.request.name, job.attempts, reason)
        await self._run.deliver(job.result(outcome, ResultKind.FAILED))

    async def _retry_rate_limited(self, job: Job, lane: Lane, reason: str, delay: float, pause: float | None) -> None:
        if pause is not None and not await self._feedback.pause_everyone(job, lane, pause):
            return
        logger.info("%s: rate limited (%s); retrying in %.2fs", job.request.name, reason, delay)
        self._run.scheduler.add_retry(job, self._run.now() + delay)

    def _retry_no_capacity(self, job: Job, reason: str, delay: float) -> None:
        logger.info("%s: no capacity (%s); retrying in %.2fs", job.request.name, reason, delay)
        self._run.scheduler.add_retry(job, self._run.now() + delay)

    def _retry(self, job: Job, reason: str, delay: float) -> None:
        job.errors.append(reason)
        attempts = job.attempts - job.rate_limited
        logger.info("%s: attempt %d/%d failed: %s; retrying in %.2fs", job.request.name, attempts, self._run.settings.retry.max_attempts, reason, delay)
        self._run.scheduler.add_retry(job, self._run.now() + delay)

    def _probe(self, job: Job, reason: str, delay: float) -> None:
        job.errors.append(reason)
        job.rate_limited += 1  # the server's outage, not the request's failure: it costs no attempt
        logger.info("%s: no answer (%s), as for everyone; probing again in %.2fs", job.request.name, reason, delay)
        self._run.scheduler.add_retry(job, self._run.now() + delay)

    def _drop_account(self, job: Job, lane: Lane, why: str) -> None:
        run = self._run
        why = run.scrub(why)
        if run.lanes.is_dropped(lane.account.name):  # another request's answer dropped it already
            logger.info("%s: %s; sending it through another account", job.request.name, why)
        else:
            logger.warning("account %r: %s; dropping it, the other %d go on", lane.account.name, why, run.lanes.accounts_left - 1)
            run.lanes.drop(lane.account.name, why)
            run.show_limits()
        job.rate_limited += 1  # not the request's fault: it costs no attempt
        run.scheduler.add_retry(job, run.now())

    def _stop_run(self, job: Job, outcome: HTTPOutcome, decision: Decision, why: str) -> None:
        run = self._run
        if decision.about_the_endpoint and not run.health.any_succeeded:
            why += _likely_url_hint(job.url, outcome)
        logger.error("%s: %s; stopping the run", job.request.name, run.scrub(why))
        run.stop(run.scrub(why))

    # -- when something other than the server failed ----------------------------------------------

    def _transport_failed(self, error: Exception) -> None:
        """The transport raised what is not a network error (a bug in a custom transport, say): retrying would hide
        it behind a failure row. Stop the run, with its traceback logged and raised as RunStopped's cause; the
        request stays unfinished, for a rerun once the transport is fixed."""
        run = self._run
        run.fail_run(f"the transport raised {type(error).__name__}: {error} (a bug, not a network error: a transport says "
                     f"'no answer' with TransportError)", error)
        logger.error("%s", run.scrub("".join(traceback.format_exception(error))))

    def _internal_error(self, job: Job, error: Exception) -> RequestResult:
        scrub = self._run.scrub
        details = scrub("".join(traceback.format_exception(error)))
        if job.answer is not None:  # the answer came and was good: it is the result, whatever failed after it
            logger.error("%s: internal error after its answer came (a bug; please report it); the answer is kept:\n%s", job.request.name, details)
            answer, job.answer = job.answer, None
            return job.result(answer, _SUCCEEDED)
        logger.error("%s: internal error (a bug; please report it):\n%s", job.request.name, details)
        job.errors.append(scrub(f"internal error: {type(error).__name__}: {error}"))
        return job.result(None, ResultKind.FAILED)


def _likely_url_hint(url: str, outcome: HTTPOutcome) -> str:
    """" (did you mean ...?)", for a URL that failed every request the way a common slip makes it fail."""
    likely = likely_url(url, status=outcome.status, tls_failed=outcome.no_answer is NoAnswer.TLS)
    return f" (did you mean {likely}?)" if likely is not None else ""
