"""The runner: requests in, one result per request out, as fast as the limiter allows.

Usage::

    processor = Processor(settings)
    async with processor.run(requests) as results:       # the run's tasks live inside this block
        async for result in results:
            print(result.index, result.response or result.errors)
            if enough:
                break                                     # leaving the block stops the run: nothing outlives it
    print(processor.stats.succeeded)

    await processor.process_into(requests, store)         # each result to store(result) as it is final (the file job)
    async for result in process_requests(requests, settings): ...     # the same, as a plain generator
    for result in process_requests_sync(requests, settings): ...      # the same, blocking (scripts, notebooks)

How it works. Every task of a run lives in one `asyncio.TaskGroup`, scoped by `run()`. A feeder takes a
concurrency slot, picks the next job from the `Scheduler` (a retry that has come due before anything new),
waits for the arrival process (`arrivals.py`: none by default) and then for the limiter to admit its
estimated tokens, and starts the attempt as a task. An attempt sends
through the transport, `classify` reads the answer, and `next_step` (pure) says what to do: succeed, fail,
retry after a delay (a rate-limit 429 also pauses every sender), or stop the run. The loop carries it out
and decides nothing itself. Requests are read from the input only when they are about to be sent, and
results wait in a bounded queue (or go straight to a store, `process_into`), so memory stays flat however
long the input is.

Stopping. `stop()` takes no more requests and lets those in flight finish; `abort()` also abandons those
in flight. Either way a request without a final result is not yielded (a rerun sends it), and iterating
the results raises `RunStopped` after the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
import traceback
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from ..base import strict_json
from ..base.clock import LOOP_CLOCK, Clock, bound_to_loop
from ..base.errors import InvalidRequest, NoAnswer, RunStopped, TransportError
from ..base.models import APIRequest, AttemptTiming, RejectedLine, RequestResult, ResultKind
from ..config.credentials import scrubber_for
from ..config.settings import Settings
from ..core.arrivals import Arrivals
from ..core.budget import Budget
from ..core.decisions import DropAccount, Fail, Probe, Retry, RunState, StopRun, Succeed, next_step
from ..core.learned_limits import NO_REPORT, SendMark, parse_rate_limit_headers, states_rate_limits
from ..core.limiter import InProcessLimiter, Limits, RateLimiter
from ..core.rate_control import Answer
from ..core.retry_policy import Decision, HTTPOutcome, Verdict, classify
from ..core.scheduler import Scheduler
from ..core.stats import RunStats
from ..providers.endpoints import Endpoint, UnsupportedEndpoint, cached_endpoint, check_request, likely_url
from ..providers.token_estimation import TokenEstimator, output_reservation
from ..transport.http import AiohttpTransport, SendFunction, Transport, TransportRequest, as_transport, outcome_of, outcome_of_error
from ..transport.streaming import STREAMED_ENDPOINTS, streamed_body
from .collector import fewer_collections
from .job import Job
from .lanes import Lane, Lanes, LimiterFactory
from .source import END, PENDING, RequestItem, RequestSource, Source, from_mapping

__all__ = ["Processor", "Results", "process_requests", "process_requests_sync", "RequestItem", "RequestSource", "Store"]

logger = logging.getLogger("rate_limited_processor")

#: Where `Processor.process_into` hands each final result: True once it is kept.
Store = Callable[[RequestResult], bool]

# Enum members read per request, as globals: on Python 3.11 reading one off its class (EnumType's __getattr__ hook) costs a few times more.
_SUCCESS, _SUCCEEDED = Verdict.SUCCESS, ResultKind.SUCCEEDED

#: Attempts in a row, across the run, that got no answer while nobody was answered: from this many on, it is an
#: outage of the server, not the bad luck of a few requests (one connection reset is not an outage).
OUTAGE_ATTEMPTS = 3

class Results:
    """The results of a run as they finish, in completion order (an async iterator).

    A result counts as done (in `stats`, and for the run's end) once the consumer comes back for the next
    one, so a result the consumer could not store (it broke out of the loop) is left for a rerun.
    Raises `RunStopped` after the last result if the run stopped early.
    """

    __slots__ = ("_processor", "_queue", "_taken", "_ended")

    def __init__(self, processor: Processor, results: asyncio.Queue[Any]) -> None:
        self._processor = processor
        self._queue = results
        self._taken: RequestResult | None = None
        self._ended = False

    def __aiter__(self) -> Results:
        return self

    async def __anext__(self) -> RequestResult:
        if self._taken is not None:
            self._processor._done(self._taken)
            self._taken = None
        if self._ended:
            raise StopAsyncIteration
        result = await self._queue.get()
        if result is END:
            self._ended = True
            stop_reason = self._processor.stats.stop_reason
            if stop_reason is not None:
                raise RunStopped(stop_reason, self._processor.stats) from self._processor._failure
            raise StopAsyncIteration
        self._taken = result
        return cast(RequestResult, result)


class Processor:
    """One run: give it requests, iterate its results. Read `stats` during or after the run."""

    def __init__(
        self,
        settings: Settings,
        *,
        limiter: RateLimiter | None = None,
        estimator: TokenEstimator | None = None,
        transport: Transport | SendFunction | None = None,
        clock: Clock = LOOP_CLOCK,
        max_ahead: int | None = None,
        limiter_factory: LimiterFactory | None = None,
        budget: Budget | None = None,
    ) -> None:
        """`transport` replaces the network (real HTTP through aiohttp by default); the run never closes one
        it was given. `clock` is where every wait and deadline is read from. `max_ahead` bounds how far past
        the oldest unfinished request the run may read, for a consumer that restores input order. `budget`
        (`--max_cost_usd`) stops the run before a request whose estimated cost would not fit in it.

        Each (account, model) lane gets a limiter of its own: an `InProcessLimiter` by default, or what
        `limiter_factory(account, model, limits)` makes (Redis, with the lane in the key); the run closes
        those at its end. A single `limiter` instead is shared by every lane, and left open."""
        self.settings = settings
        self.budget = budget
        self.clock = clock
        #: `clock.now`, bound to the running loop once the run starts (`bound_to_loop`).
        self._now = clock.now
        #: The run's endpoint. None when `request_url` is only an API root ("https://api.openai.com/v1"),
        #: for Batch input whose lines name their own; then lines without a url are rejected.
        self.endpoint = _endpoint_or_none(settings.request_url)
        self._given_limiter = limiter
        if limiter is not None:
            make_limiter: LimiterFactory = lambda account, model, limits: limiter  # noqa: E731
        elif limiter_factory is not None:
            make_limiter = limiter_factory
        else:
            make_limiter = lambda account, model, limits: InProcessLimiter(limits, clock=bound_to_loop(clock.now), sleep=clock.sleep)  # noqa: E731
        #: Every (account, model) lane: its limiter, its ceiling learned from headers, its rate control.
        self.lanes = Lanes(settings, make_limiter=make_limiter, clock=clock)
        self.estimator = estimator if estimator is not None else TokenEstimator(settings.token_encoding_name)
        self.stats = RunStats(settings.limits, started_at=clock.now(), clock=clock.now, max_in_flight=settings.max_in_flight)
        self._transport = as_transport(transport) if transport is not None else None
        self._scheduler: Scheduler[Job] = Scheduler(max_waiting_retries=settings.max_in_flight, max_ahead=max_ahead)
        self._scrub = scrubber_for(settings)
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._arrivals = Arrivals(settings.arrivals, seed=settings.arrival_seed)
        self._changed = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._results: asyncio.Queue[Any] = asyncio.Queue(maxsize=settings.max_in_flight)
        self._tasks: asyncio.TaskGroup | None = None
        self._feeder: asyncio.Task[None] | None = None
        self._positions = 0  # 1-based index given to plain dicts, for messages
        #: Something has succeeded: the endpoint works. Until then, a failure about the endpoint makes the run
        #: probe with one request at a time, and stops it once that request's attempts are used up.
        self._any_succeeded = False
        self._endpoint_failing = False
        #: When the server last answered anything (any status), and since when it has answered nobody: an outage
        #: (None while it answers). See `decisions.Probe`.
        self._last_answered = -math.inf
        self._silent_since: float | None = None
        self._silent_attempts = 0
        self._failure: BaseException | None = None
        self._started = False
        self._store: Store | None = None

    def __repr__(self) -> str:
        return f"Processor({self.settings.request_url!r}, {self.lanes!r})"

    @property
    def stopping(self) -> bool:
        """The run takes no new requests and retries nothing (it was stopped, or something failed for all)."""
        return self.stats.stop_reason is not None

    @property
    def retries_waiting(self) -> int:
        """Requests waiting for their retry to come due (a queue depth, for `metrics.py`)."""
        return self._scheduler.retries_waiting

    @property
    def open_requests(self) -> int:
        """Requests read from the input whose result has not been taken yet."""
        return self._scheduler.open_count

    def stop(self, reason: str = "stopped") -> None:
        """Take no more requests; those in flight finish and are still yielded. The first reason wins."""
        if self.stats.stop_reason is None:
            self.stats.stop_reason = reason
        feeder = self._feeder
        if feeder is not None and not feeder.done() and feeder is not asyncio.current_task():
            feeder.cancel()

    def abort(self, reason: str = "aborted") -> None:
        """Stop at once: requests in flight are abandoned too (a rerun sends them again)."""
        self.stop(reason)
        for task in list(self._in_flight):
            task.cancel()

    @contextlib.asynccontextmanager
    async def run(self, requests: RequestSource, *, store: Store | None = None) -> AsyncIterator[Results]:
        """The run, scoped: its tasks start on entry and none outlives the block. Leaving early aborts it.

        With `store`, each result goes to it the moment it is final, and the results iterated are none
        (iterating them waits for the end); see `process_into`.
        """
        if self._started:
            raise RuntimeError("a Processor runs once; make a new one for another run")
        self._started = True
        self._store = store
        self._now = bound_to_loop(self.clock.now)
        self.stats.clock = self.stats.meter.clock = self._now  # the same time, read at less cost per attempt
        transport = self._transport if self._transport is not None else AiohttpTransport(self.settings.max_in_flight)
        self.stats.started_at = self._now()
        raised: BaseException | None = None
        with fewer_collections():  # a run's garbage is freed by reference counting: see collector.py
            try:
                async with asyncio.TaskGroup() as tasks:
                    self._tasks = tasks
                    self._feeder = tasks.create_task(self._feed(Source(requests), transport))
                    if self.stopping:  # stopped before it started
                        self._feeder.cancel()
                    finisher = tasks.create_task(self._finish())
                    try:
                        yield Results(self, self._results)
                    except BaseException as error:  # raised again below, so the TaskGroup does not wrap it in a group
                        raised = error
                    finally:
                        if not finisher.done():  # the consumer left before the end: nothing may outlive the block
                            self.abort("the caller stopped reading results")
                            finisher.cancel()
                if raised is not None:
                    raise raised
            finally:
                self.stats.unfinished = self._scheduler.open_count
                self.stats.finished_at = self._now()
                lanes = self.lanes.all()
                self.stats.control = lanes[0].control.report() if len(lanes) == 1 else None
                self.stats.needed_in_flight = sum(lane.control.needed_in_flight(self.stats.finished_at) for lane in lanes) if lanes else None
                self.stats.lanes = self.lanes.reports()
                self._show_limits()
                self.stats.dropped_accounts = self.lanes.dropped
                if self._transport is None:
                    await transport.aclose()
                if self._given_limiter is None:
                    for limiter in {id(lane.limiter): lane.limiter for lane in lanes}.values():
                        with contextlib.suppress(Exception):  # a limiter that cannot close loses nothing of the run's
                            await limiter.aclose()

    async def process(self, requests: RequestSource) -> AsyncIterator[RequestResult]:
        """`run()` as a plain async generator: one result per request, in completion order.

        Raises RunStopped after the last result if the run stopped early. Close the generator
        (`contextlib.aclosing`) if you stop iterating early; or use `run()`, where a `break` is enough.
        """
        async with self.run(requests) as results:
            async for result in results:
                yield result

    async def process_into(self, requests: RequestSource, store: Store) -> None:
        """The run, each result handed to `store` the moment it is final, in completion order; returns at the end.

        `store(result)` returns True once it has kept the result (a file job: the row is written), which
        makes the result done; False if it could not (it should stop the run: `abort`), which leaves the
        request for a rerun. It is called from the run's own tasks and must not block. An exception it
        raises aborts the run. Raises RunStopped at the end if the run stopped early. This is `run()`
        without the queue and the consumer's task switch per result: the file job's way.
        """
        async with self.run(requests, store=store) as results:
            async for _ in results:  # only the end comes through
                pass

    async def _deliver(self, result: RequestResult) -> None:
        """A final result: to the store, or to the consumer through the queue."""
        store = self._store
        if store is None:
            await self._results.put(result)
            return
        try:
            stored = store(result)
        except Exception as error:
            self._failure = error
            logger.error("storing a result failed: %s", self._scrub("".join(traceback.format_exception(error))))
            self.abort(self._scrub(f"storing a result failed: {type(error).__name__}: {error}"))
            return
        if stored:
            self._done(result)

    def _done(self, result: RequestResult) -> None:
        """The consumer took this result and came back for more: it is done."""
        self.stats.record_result(result)
        if result.position is not None:
            self._scheduler.close(result.position)
        self._changed.set()

    # -- the feeder -------------------------------------------------------------------------------

    async def _feed(self, source: Source, transport: Transport) -> None:
        try:
            while True:
                if self._slots.locked():  # every slot is taken: --max_in_flight, not the limits, sets the pace now
                    self.stats.in_flight_cap_waits += 1
                    self.stats.at_in_flight_cap = True
                    await self._slots.acquire()
                    self.stats.at_in_flight_cap = False
                else:
                    await self._slots.acquire()
                while self._in_flight and self._one_at_a_time:
                    self._changed.clear()
                    await self._wait_for_change()
                try:
                    job = await self._next_job(source)
                except Exception as error:
                    self._fail_run(f"reading the requests failed: {type(error).__name__}: {error}", error)
                    return
                if job is None:
                    return
                if self.budget is not None and not await self._reserve_cost(job, self.budget):
                    return
                lane = self._lane_now(job)
                if lane is None:
                    lane = await self._lane_for(job)
                wait = self._arrival_wait(lane)
                if wait > 0:
                    await self.clock.sleep(wait)
                self._arrived(job)
                try:
                    admitted = await lane.limiter.acquire(job.tokens, job.output_tokens)
                except Exception as error:
                    self._fail_run(f"the rate limiter failed: {type(error).__name__}: {error}", error)
                    return
                job.lane = lane
                lane.in_flight += 1
                lane.sent += 1
                job.mark = SendMark(self._now(), admitted.requests, admitted.tokens)
                lane.control.sent(job.mark.sent_at)
                assert self._tasks is not None
                task = self._tasks.create_task(self._attempt(job, transport))
                self._in_flight.add(task)
        except Exception as error:  # a bug of ours: stop, and say so, rather than leave the consumer waiting
            self._fail_run(f"internal error: {type(error).__name__}: {error}", error)
        finally:
            await source.aclose()

    def _may_take_one_more(self, lane: Lane) -> bool:
        """Not while the lane's first request awaits the answer that tells its limits, nor beyond its window of
        requests in flight; but always when nothing at all is in flight."""
        return not (lane.probing or lane.in_flight >= lane.control.window(self._now())) or not self._in_flight

    def _lane_now(self, job: Job) -> Lane | None:
        """The lane for this job if it can take it at once (as `_lane_for` would say); None to ask `_lane_for`."""
        lane = self.lanes.choose(job.model, job.tokens, job.output_tokens)
        return lane if lane.started and self._may_take_one_more(lane) else None

    async def _lane_for(self, job: Job) -> Lane:
        """The lane that can take this job soonest, once it may take one more: not while its first request
        awaits the answer that tells its limits, nor beyond its window of requests in flight."""
        while True:
            lane = self.lanes.choose(job.model, job.tokens, job.output_tokens)
            if not lane.started:  # a new lane: its limiter starts at its limits (a shared, given one is told them)
                lane.started = True
                self._show_limits()
                if self._given_limiter is not None:
                    await self._apply_limits(lane, lane.applied)
            if self._may_take_one_more(lane):
                return lane
            self._changed.clear()
            await self._wait_for_change()

    def _arrival_wait(self, lane: Lane) -> float:
        """Seconds until the arrival process lets the next send go (`--arrivals`; 0 when none is set). Poisson
        arrivals without a rate of their own run at the request limit of the lane the job goes through."""
        rate = self.settings.request_rate
        if rate is None and self.settings.arrivals == "poisson":
            per_minute = lane.applied.requests_per_minute
            rate = per_minute / 60 if per_minute is not None else None
        if rate is None:
            return 0.0  # no gap to keep between sends: the limiter alone spaces them
        due = self._arrivals.due(rate)
        return due - self._now() if due is not None else 0.0

    def _arrived(self, job: Job) -> None:
        """The arrival process let the job go: it counts as scheduled from now."""
        now = self._now()
        self._arrivals.released(now)
        if job.scheduled_at is None:
            job.scheduled_at = now

    @property
    def _one_at_a_time(self) -> bool:
        """While the endpoint has failed and nothing has succeeded, requests go one at a time (a wrong URL costs
        one request's attempts, not the whole file's); so they do while the server answers nobody (an outage: the
        one probes for everyone). Each lane's first request also goes alone (`_lane_for`)."""
        return (self._endpoint_failing and not self._any_succeeded) or self._silent_attempts >= OUTAGE_ATTEMPTS

    async def _next_job(self, source: Source) -> Job | None:
        """A retry that is due, else a new request; waits while only future retries remain."""
        while True:
            self._changed.clear()
            job = self._scheduler.due_retry(self._now())
            if job is not None:
                return job
            # While the run goes one request at a time, a request waiting for its retry is that one request.
            held_back = self._one_at_a_time and self._scheduler.retries_waiting > 0
            if not source.exhausted and self._scheduler.may_read() and not held_back:
                item = source.poll()
                if item is END:
                    continue
                if item is not PENDING:
                    admitted = self._admit(item)
                    if isinstance(admitted, Job):
                        return admitted
                    await self._deliver(admitted)
                    continue
            elif source.exhausted and not self._scheduler.retries_waiting and not self._in_flight:
                return None
            await self._wait_for_change(self._scheduler.next_retry_at(), source.fetching)

    async def _reserve_cost(self, job: Job, budget: Budget) -> bool:
        """Hold this attempt's estimated cost in the budget. While it does not fit, wait for the attempts in flight to
        settle (answers usually cost less than estimated); when nothing in flight can make room, stop the run."""
        cost = budget.estimate(job.request.body, job.prompt_tokens, job.completion_tokens)
        if cost is None:
            self._stop_for_budget(budget.no_price_reason(job.request.body))
            return False
        while not budget.fits(cost):
            if not self._in_flight:
                self._stop_for_budget(budget.stop_reason(cost))
                return False
            self._changed.clear()
            await self._wait_for_change()
        budget.reserve(cost)
        job.cost = cost
        return True

    def _stop_for_budget(self, reason: str) -> None:
        logger.warning("%s; stopping the run (a rerun resumes)", reason)
        self.stop(reason)

    async def _wait_for_change(self, until: float | None = None, fetching: asyncio.Future[Any] | None = None) -> None:
        """Until an attempt or a result changes something, the next input item arrives, or the clock reaches `until`."""
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._changed.wait())]
        if until is not None:
            waiters.append(asyncio.ensure_future(self.clock.sleep(max(0.0, until - self._now()))))
        try:
            await asyncio.wait([*waiters, fetching] if fetching is not None else waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _admit(self, item: RequestItem) -> Job | RequestResult:
        """Validate and estimate a request; a line that cannot be sent becomes its failure result."""
        position = self._scheduler.open()
        if isinstance(item, RejectedLine):
            metadata = {"custom_id": item.custom_id} if item.custom_id is not None else None
            return self._invalid(item.index, item.content, metadata, item.reason, item.custom_id, position)
        if not isinstance(item, APIRequest):
            self._positions += 1
            item = from_mapping(item, self._positions)
            problem = strict_json.unsendable(item.body)  # a file's lines were read strictly; a caller's dicts were not
            if problem is not None:
                return self._invalid(item.index, item.body, item.metadata, f"{item.name}: the request body {problem}", item.custom_id, position)
        try:
            url, endpoint, prompt, completion = check_request(item, self.settings.request_url, self.estimator.estimate_parts)
            output_tokens = output_reservation(endpoint, item.body)
        except InvalidRequest as error:
            return self._invalid(item.index, item.body, item.metadata, f"{item.name}: {error}", item.custom_id, position)
        model = item.body.get("model")
        tokens = endpoint.charged_tokens(prompt, completion)
        return Job(item, url, endpoint, tokens, prompt, completion, position, model=model if isinstance(model, str) else "", output_tokens=output_tokens)

    def _invalid(self, index: int, content: Any, metadata: Any, reason: str, custom_id: str | None, position: int) -> RequestResult:
        logger.error("%s (not sent)", reason)
        return RequestResult(
            index, content, metadata, response=None, errors=(reason,), attempts=0,
            kind=ResultKind.INVALID, custom_id=custom_id, position=position,
        )

    def _fail_run(self, reason: str, error: BaseException) -> None:
        """Something every request depends on failed: stop, and say why (the cause goes with RunStopped)."""
        reason = self._scrub(reason)
        logger.error("%s; stopping the run", reason)
        self._failure = error
        self.stop(reason)

    async def _apply_limits(self, lane: Lane, limits: Limits) -> bool:
        """Move a lane's limiter to these limits. False (and the run stops) if the limiter failed."""
        lane.applied = limits
        try:
            await lane.limiter.set_limits(limits)
        except Exception as error:
            self._fail_run(f"the rate limiter failed: {type(error).__name__}: {error}", error)
            return False
        return True

    # -- one attempt --------------------------------------------------------------------------------

    async def _attempt(self, job: Job, transport: Transport) -> None:
        try:
            await self._try_once(job, transport)
        except Exception as error:  # a bug of ours must not lose the request silently, nor a paid answer
            await self._deliver(self._internal_error(job, error))
        finally:
            if job.lane is not None:
                job.lane.in_flight -= 1
            self._slots.release()
            task = asyncio.current_task()
            if task is not None:
                self._in_flight.discard(task)
            self._changed.set()

    async def _try_once(self, job: Job, transport: Transport) -> None:
        """Send once, classify the answer, and carry out the step `next_step` chooses."""
        settings = self.settings
        job.attempts += 1
        self.stats.record_attempt(job.tokens, is_retry=job.attempts > 1)
        verbose = logger.isEnabledFor(logging.INFO)  # the default level logs nothing per request: build no arguments for it
        if verbose:
            logger.info("%s: sending, attempt %d/%d, ~%d tokens", job.request.name, job.attempts, settings.retry.max_attempts, job.tokens)
        stream = settings.stream and job.endpoint in STREAMED_ENDPOINTS
        body = streamed_body(job.endpoint, job.request.body) if stream else job.request.body
        lane = job.lane
        assert lane is not None
        request = TransportRequest(job.url, body, lane.headers, settings.request_timeout, stream=stream)
        started = self._now()
        try:
            response = await transport.send(request)
        except TransportError as error:
            job.received = None
            outcome = outcome_of_error(error, self._scrub)
        except Exception as error:  # not "no answer" (that is TransportError): a bug in the transport
            self._transport_failed(job, error)
            return
        else:
            job.received = response.timings
            outcome = outcome_of(response, self._scrub)
        decision = classify(outcome, endpoint=job.endpoint)
        if decision.verdict is _SUCCESS:
            job.answer = outcome
        if self.budget is not None:
            succeeded, answered = decision.verdict is _SUCCESS, outcome.status is not None
            self.budget.settle(job.cost, self.budget.actual(job.request.body, job.cost, answer=outcome.body, succeeded=succeeded, answered=answered))
            job.cost = 0.0
        now = self._now()
        ended = outcome.status if outcome.status is not None else outcome.no_answer.value if outcome.no_answer is not None else "no answer"
        job.attempt_log.append(AttemptTiming(started, now, ended, decision.rate_limited))
        self.stats.record_answer(now, rate_limited=decision.rate_limited, took=now - started)
        lane.succeeded += decision.verdict is _SUCCESS
        lane.rate_limited += decision.rate_limited
        if decision.rate_limited:
            job.rate_limited += 1
            if job.first_rate_limited_at is None:
                job.first_rate_limited_at = now
        self._any_succeeded |= decision.verdict is _SUCCESS
        self._endpoint_failing |= decision.about_the_endpoint
        outage_for = None
        if outcome.status is not None:
            self._last_answered = now
            self._silent_since = None
            self._silent_attempts = 0
        elif self._any_succeeded and self._last_answered < started:  # no answer, and nobody answered since it was sent
            if self._silent_since is None:
                self._silent_since = started
            self._silent_attempts += 1
            if self._silent_attempts == OUTAGE_ATTEMPTS:
                logger.warning("the server answers nobody (%s); probing it with one request at a time", self._scrub(decision.reason))
            if self._silent_attempts >= OUTAGE_ATTEMPTS:
                outage_for = now - self._silent_since
        if not await self._learn(job, lane, outcome, decision, now) and decision.verdict is not _SUCCESS:
            return  # the limiter failed and the run stops; a success is still kept
        # An answer from an account already dropped (it was in flight) is about that account: the rest are left.
        accounts_left = self.lanes.accounts_left + self.lanes.is_dropped(lane.account.name)
        run = RunState(
            stopping=self.stopping, any_succeeded=self._any_succeeded, hintless_pause=lane.control.hintless_pause(),
            accounts_left=accounts_left, outage_for=outage_for,
        )
        step = next_step(decision, job=job.state(now), run=run, policy=settings.retry)
        reason = self._scrub(decision.reason) if not isinstance(step, Succeed) else ""
        match step:
            case Succeed():
                if verbose:
                    logger.info("%s: succeeded on attempt %d in %.2fs", job.request.name, job.attempts, self._now() - started)
                result = job.result(outcome, _SUCCEEDED)
                job.answer = None
                await self._deliver(result)
            case Fail():
                job.errors.append(reason)
                logger.error("%s: failed after %d attempt(s): %s", job.request.name, job.attempts, reason)
                await self._deliver(job.result(outcome, ResultKind.FAILED))
            case Retry(delay=delay, pause_everyone=pause, rate_limited=True):
                if pause is not None and not await self._pause_everyone(job, lane, pause):
                    return
                logger.info("%s: rate limited (%s); retrying in %.2fs", job.request.name, reason, delay)
                self._scheduler.add_retry(job, self._now() + delay)
            case Retry(delay=delay):
                job.errors.append(reason)
                attempts = job.attempts - job.rate_limited
                logger.info("%s: attempt %d/%d failed: %s; retrying in %.2fs", job.request.name, attempts, settings.retry.max_attempts, reason, delay)
                self._scheduler.add_retry(job, self._now() + delay)
            case Probe(delay=delay):
                job.errors.append(reason)
                job.rate_limited += 1  # the server's outage, not the request's failure: it costs no attempt
                logger.info("%s: no answer (%s), as for everyone; probing again in %.2fs", job.request.name, reason, delay)
                self._scheduler.add_retry(job, self._now() + delay)
            case DropAccount(reason=why):
                why = self._scrub(why)
                if self.lanes.is_dropped(lane.account.name):  # another request's answer dropped it already
                    logger.info("%s: %s; sending it through another account", job.request.name, why)
                else:
                    logger.warning("account %r: %s; dropping it, the other %d go on", lane.account.name, why, self.lanes.accounts_left - 1)
                    self.lanes.drop(lane.account.name, why)
                    self._show_limits()
                job.rate_limited += 1  # not the request's fault: it costs no attempt
                self._scheduler.add_retry(job, self._now())
            case StopRun(reason=why):
                if decision.about_the_endpoint and not self._any_succeeded:
                    why += _likely_url_hint(job.url, outcome)
                logger.error("%s: %s; stopping the run", job.request.name, self._scrub(why))
                self.stop(self._scrub(why))

    async def _learn(self, job: Job, lane: Lane, outcome: HTTPOutcome, decision: Decision, now: float) -> bool:
        """Let the lane's tuner and control learn from this answer (which came at `now`), and move its limiter to
        what they ask. False if the limiter failed."""
        headers = outcome.headers
        report = parse_rate_limit_headers(headers, now=self.clock.wall()) if states_rate_limits(headers) else NO_REPORT
        mark = job.mark
        try:
            used = 0
            if decision.verdict is not _SUCCESS and mark is not None:
                # The server charges only what it admits: a refused request is not part of what was spent,
                # and produced no output.
                await lane.limiter.refused(job.tokens)
                mark = SendMark(mark.sent_at, mark.requests - 1, mark.tokens - job.tokens)
            elif job.output_tokens:
                # The reservation was the request's ceiling (max_tokens); the answer says what it used.
                used = _output_tokens_used(outcome.body, job.output_tokens)
            if job.output_tokens > used:
                await lane.limiter.refund(job.output_tokens - used)
        except Exception as error:
            self._fail_run(f"the rate limiter failed: {type(error).__name__}: {error}", error)
            return False
        from_the_api = outcome.status is not None and outcome.status < 500
        if mark is not None:
            lane.tuner.observe(mark, report, from_the_api=from_the_api)
            if from_the_api:
                answer = Answer(
                    mark.sent_at, job.tokens, decision.rate_limited, decision.on_tokens, decision.on_output_tokens, used,
                    explained=decision.rate_limited and report.exhausted,
                )
                lane.control.answered(answer, now)
            else:  # a 5xx or no answer says nothing about the server's rate limiter
                lane.control.lost(mark.sent_at)
        limits = lane.control.limits(lane.tuner.limits(), now)
        if _close(limits, lane.applied):
            return True
        self._show_limits()
        logger.debug("%s: sending at %s (server-side ratios %.2f requests, %.2f tokens)", lane.name, limits, lane.tuner.requests.ratio, lane.tuner.tokens.ratio)
        return await self._apply_limits(lane, limits)

    def _show_limits(self) -> None:
        """The limits the progress display and the summary hold the run's pace against: its one lane's, as the
        server states them, or those of every lane of an account still in use added up. And how the servers'
        token counts compare with our estimates (several lanes: weighted by what each has sent)."""
        lanes = self.lanes.all()
        if not lanes:  # nothing was sent: the limits given stand
            return
        if len(lanes) == 1:
            self.stats.limits = lanes[0].tuner.server_limits()
            self.stats.server_token_ratio = lanes[0].tuner.tokens.ratio
            return
        in_use = [lane for lane in lanes if not self.lanes.is_dropped(lane.account.name)] or lanes
        self.stats.limits = _combined([lane.tuner.server_limits() for lane in in_use])
        sent = sum(lane.sent for lane in lanes)
        if sent:
            self.stats.server_token_ratio = sum(lane.tuner.tokens.ratio * lane.sent for lane in lanes) / sent

    async def _pause_everyone(self, job: Job, lane: Lane, pause: float) -> bool:
        """After a rate-limit 429, nobody sends through that lane until the pause has passed. False if the
        limiter failed."""
        logger.debug("%s: rate limited; all sending through %s paused for %.3fs", job.request.name, lane.name, pause)
        now = self._now()
        lane.control.paused(now, now + pause)
        try:
            await lane.limiter.pause(pause)
        except Exception as error:
            self._fail_run(f"the rate limiter failed: {type(error).__name__}: {error}", error)
            return False
        return True

    def _transport_failed(self, job: Job, error: Exception) -> None:
        """The transport raised what is not a network error (a bug in a custom transport, say): retrying would hide
        it behind a failure row. Stop the run, with its traceback logged and raised as RunStopped's cause; the
        request stays unfinished, for a rerun once the transport is fixed."""
        self._fail_run(f"the transport raised {type(error).__name__}: {error} (a bug, not a network error: a transport says "
                       f"'no answer' with TransportError)", error)
        logger.error("%s", self._scrub("".join(traceback.format_exception(error))))

    def _internal_error(self, job: Job, error: Exception) -> RequestResult:
        details = self._scrub("".join(traceback.format_exception(error)))
        if job.answer is not None:  # the answer came and was good: it is the result, whatever failed after it
            logger.error("%s: internal error after its answer came (a bug; please report it); the answer is kept:\n%s", job.request.name, details)
            answer, job.answer = job.answer, None
            return job.result(answer, _SUCCEEDED)
        logger.error("%s: internal error (a bug; please report it):\n%s", job.request.name, details)
        job.errors.append(self._scrub(f"internal error: {type(error).__name__}: {error}"))
        return job.result(None, ResultKind.FAILED)

    # -- the end ------------------------------------------------------------------------------------

    async def _finish(self) -> None:
        """Once the feeder is done (or stopped), let the attempts in flight finish, then end the results."""
        assert self._feeder is not None
        await asyncio.wait([self._feeder])
        while self._in_flight:
            await asyncio.wait(set(self._in_flight))
        await self._results.put(END)


def _likely_url_hint(url: str, outcome: HTTPOutcome) -> str:
    """" (did you mean ...?)", for a URL that failed every request the way a common slip makes it fail."""
    likely = likely_url(url, status=outcome.status, tls_failed=outcome.no_answer is NoAnswer.TLS)
    return f" (did you mean {likely}?)" if likely is not None else ""


def _close(a: Limits, b: Limits, tolerance: float = 0.01) -> bool:
    """Limits within 1% of each other: not worth rebuilding the buckets for. (Unlimited is close only to itself.)"""
    if a is b:
        return True
    if a.output_burst != b.output_burst:
        return False
    pairs = (
        (a.requests_per_minute, b.requests_per_minute),
        (a.tokens_per_minute, b.tokens_per_minute),
        (a.output_tokens_per_minute, b.output_tokens_per_minute),
    )
    return all(x == y or (x is not None and y is not None and math.isfinite(x) and math.isfinite(y) and abs(x - y) <= tolerance * max(x, y)) for x, y in pairs)


def _combined(limits: list[Limits]) -> Limits:
    """The lanes' limits added up: what the run could send at in all (None where a lane's is not known)."""

    def total(values: list[float | None]) -> float | None:
        return None if any(value is None for value in values) else sum(value for value in values if value is not None)

    return Limits(
        total([each.requests_per_minute for each in limits]),
        total([each.tokens_per_minute for each in limits]),
        output_tokens_per_minute=total([each.output_tokens_per_minute for each in limits]),
    )


def _output_tokens_used(body: Any, reserved: int) -> int:
    """What an answer says it used of its output reservation (Anthropic's usage.output_tokens); the whole
    reservation when it does not say."""
    usage = body.get("usage") if isinstance(body, dict) else None
    used = usage.get("output_tokens") if isinstance(usage, dict) else None
    if isinstance(used, int) and not isinstance(used, bool) and used >= 0:
        return min(used, reserved)
    return reserved


def _endpoint_or_none(url: str) -> Endpoint | None:
    try:
        return cached_endpoint(url)
    except UnsupportedEndpoint:
        return None



async def process_requests(
    requests: RequestSource,
    settings: Settings,
    *,
    limiter: RateLimiter | None = None,
    transport: Transport | SendFunction | None = None,
) -> AsyncIterator[RequestResult]:
    """Send every request within the limits; yield one `RequestResult` per request as each completes."""
    async for result in Processor(settings, limiter=limiter, transport=transport).process(requests):
        yield result


def process_requests_sync(
    requests: Iterable[RequestItem],
    settings: Settings,
    *,
    limiter: RateLimiter | None = None,
    transport: Transport | SendFunction | None = None,
) -> Iterator[RequestResult]:
    """`process_requests` for code that is not async: a plain iterator of results, in completion order.

    The run has an event loop of its own in a helper thread, so this works in a script and equally where
    a loop is already running (a Jupyter notebook). The thread produces at most `max_in_flight` results
    ahead of the caller. Leaving the loop early (or Ctrl-C) stops the run; `RunStopped` is raised after
    the last result if the run stopped itself.
    """
    if isinstance(requests, AsyncIterable):
        raise TypeError("process_requests_sync takes a plain iterable; use process_requests for an async one")
    handoff: queue.SimpleQueue[Any] = queue.SimpleQueue()
    loop = asyncio.new_event_loop()
    credit = asyncio.Semaphore(settings.max_in_flight)

    async def pump() -> None:
        try:
            async with Processor(settings, limiter=limiter, transport=transport).run(requests) as results:
                async for result in results:
                    await credit.acquire()
                    handoff.put(result)
        except asyncio.CancelledError:  # the caller left early; leaving the block above stopped the run
            pass
        except BaseException as error:  # RunStopped, or anything else: raised again in the caller's thread
            handoff.put(_Raised(error))
        else:
            handoff.put(END)

    task = loop.create_task(pump())
    thread = threading.Thread(target=loop.run_until_complete, args=(task,), name="rate_limited_processor", daemon=True)
    thread.start()
    try:
        while (item := handoff.get()) is not END:
            if isinstance(item, _Raised):
                raise item.error
            yield item
            loop.call_soon_threadsafe(credit.release)
    finally:
        if not task.done():
            loop.call_soon_threadsafe(task.cancel)
        thread.join()
        loop.close()


@dataclass(frozen=True, slots=True)
class _Raised:
    """An exception crossing from the run's thread to the caller's."""

    error: BaseException
