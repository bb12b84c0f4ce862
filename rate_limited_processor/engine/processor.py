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

How it works. Every task of a run lives in one `asyncio.TaskGroup`, scoped by `run()`. A feeder waits at
its gates in turn (`gates.py`: a concurrency slot, one at a time while the endpoint fails), takes the next
job (`intake.py`: a retry that has come due before anything new), waits at the rest (the budget, the lane,
the arrival process, the lane's limiter) and starts the attempt as a task (`attempt.py`). An attempt sends
through the transport, `classify` reads the answer, the run learns from it (`feedback.py`), and `next_step`
(pure) says what to do: succeed, fail, retry after a delay (a rate-limit 429 also pauses every sender), or
stop the run. One handler per step carries it out and decides nothing itself. What the parts share is one
`RunContext` (`context.py`). Requests are read from the input only when they are about to be sent, and
results wait in a bounded queue (or go straight to a store, `process_into`), so memory stays flat however
long the input is.

Stopping. `stop()` takes no more requests and lets those in flight finish; `abort()` also abandons those
in flight. Either way a request without a final result is not yielded (a rerun sends it), and iterating
the results raises `RunStopped` after the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from ..base.clock import LOOP_CLOCK, Clock, bound_to_loop
from ..base.errors import RunStopped
from ..base.models import RequestResult
from ..config.credentials import scrubber_for
from ..config.settings import Settings
from ..core.budget import Budget
from ..core.daily_limit import DailyLimit, SharedDaySpend
from ..core.limiter import InProcessLimiter, RateLimiter
from ..core.scheduler import Scheduler
from ..core.stats import RunStats
from ..providers.endpoints import Endpoint, UnsupportedEndpoint, cached_endpoint
from ..providers.token_estimation import TokenEstimator
from ..transport.http import AiohttpTransport, SendFunction, Transport, as_transport
from .attempt import Attempts
from .collector import fewer_collections
from .context import RunContext, Store
from .feedback import Feedback
from .gates import ArrivalsGate, BudgetGate, DailyGate, Gate, LaneGate, LimiterGate, OneAtATime, Slots
from .health import OUTAGE_ATTEMPTS as OUTAGE_ATTEMPTS  # the old `runner.OUTAGE_ATTEMPTS` still imports
from .intake import Intake
from .job import Job
from .lanes import Lanes, LimiterFactory
from .source import END, RequestItem, RequestSource, Source

__all__ = ["Processor", "Results", "process_requests", "process_requests_sync", "RequestItem", "RequestSource", "Store"]


class Results:
    """The results of a run as they finish, in completion order (an async iterator).

    A result counts as done (in `stats`, and for the run's end) once the consumer comes back for the next
    one, so a result the consumer could not store (it broke out of the loop) is left for a rerun.
    Raises `RunStopped` after the last result if the run stopped early.
    """

    __slots__ = ("_run", "_queue", "_taken", "_ended")

    def __init__(self, run: RunContext, results: asyncio.Queue[Any]) -> None:
        self._run = run
        self._queue = results
        self._taken: RequestResult | None = None
        self._ended = False

    def __aiter__(self) -> Results:
        return self

    async def __anext__(self) -> RequestResult:
        if self._taken is not None:
            self._run.done(self._taken)
            self._taken = None
        if self._ended:
            raise StopAsyncIteration
        result = await self._queue.get()
        if result is END:
            self._ended = True
            stop_reason = self._run.stats.stop_reason
            if stop_reason is not None:
                raise RunStopped(stop_reason, self._run.stats) from self._run.failure
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
        daily: DailyLimit | None = None,
        save_day: Callable[[dict[str, Any]], None] | None = None,
        shared_day: SharedDaySpend | None = None,
    ) -> None:
        """`transport` replaces the network (real HTTP through aiohttp by default); the run never closes one
        it was given. `clock` is where every wait and deadline is read from. `max_ahead` bounds how far past
        the oldest unfinished request the run may read, for a consumer that restores input order. `budget`
        (`--max_cost_usd`) stops the run before a request whose estimated cost would not fit in it. `daily` (made from
        the settings' per-day limits when not given) stops it before a request that would pass a daily limit, and
        `save_day` is given its record to keep (the file job writes it beside the results); `shared_day` (Redis) counts
        every process's spend on one key instead of this one's alone.

        Each (account, model) lane gets a limiter of its own: an `InProcessLimiter` by default, or what
        `limiter_factory(account, model, limits)` makes (Redis, with the lane in the key); the run closes
        those at its end. A single `limiter` instead is shared by every lane, and left open."""
        self.settings = settings
        self.budget = budget
        if daily is None and (settings.max_requests_per_day is not None or settings.max_tokens_per_day is not None):
            daily = DailyLimit(settings.max_requests_per_day, settings.max_tokens_per_day)
        #: The day's spend against `--max_requests_per_day` / `--max_tokens_per_day`; None without either.
        self.daily = daily
        self.clock = clock
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
        scheduler: Scheduler[Job] = Scheduler(max_waiting_retries=settings.max_in_flight, max_ahead=max_ahead)
        self._run = run = RunContext(settings, clock=clock, stats=self.stats, lanes=self.lanes, scheduler=scheduler, scrub=scrubber_for(settings))
        self._feedback = Feedback(run)
        self._intake = Intake(run, self.estimator)
        #: The gates the feeder awaits in turn: before it reads the next request, and then with the request.
        self._slots = Slots(run)
        self._before: tuple[Gate[None], ...] = (self._slots, OneAtATime(run))
        self._gates: tuple[Gate[Job], ...] = (
            *((BudgetGate(run, budget),) if budget is not None else ()),
            LaneGate(run, self._feedback, tell_new_lanes=limiter is not None),
            ArrivalsGate(run),
            LimiterGate(run),
            *((DailyGate(run, daily, save_day, shared_day),) if daily is not None else ()),
        )
        self._started = False

    def __repr__(self) -> str:
        return f"Processor({self.settings.request_url!r}, {self.lanes!r})"

    @property
    def stopping(self) -> bool:
        """The run takes no new requests and retries nothing (it was stopped, or something failed for all)."""
        return self._run.stopping

    @property
    def retries_waiting(self) -> int:
        """Requests waiting for their retry to come due (a queue depth, for `metrics.py`)."""
        return self._run.scheduler.retries_waiting

    @property
    def open_requests(self) -> int:
        """Requests read from the input whose result has not been taken yet."""
        return self._run.scheduler.open_count

    def stop(self, reason: str = "stopped") -> None:
        """Take no more requests; those in flight finish and are still yielded. The first reason wins."""
        self._run.stop(reason)

    def abort(self, reason: str = "aborted") -> None:
        """Stop at once: requests in flight are abandoned too (a rerun sends them again)."""
        self._run.abort(reason)

    @contextlib.asynccontextmanager
    async def run(self, requests: RequestSource, *, store: Store | None = None) -> AsyncIterator[Results]:
        """The run, scoped: its tasks start on entry and none outlives the block. Leaving early aborts it.

        With `store`, each result goes to it the moment it is final, and the results iterated are none
        (iterating them waits for the end); see `process_into`.
        """
        if self._started:
            raise RuntimeError("a Processor runs once; make a new one for another run")
        self._started = True
        run = self._run
        run.store = store
        run.now = bound_to_loop(self.clock.now)
        transport = self._transport if self._transport is not None else AiohttpTransport(self.settings.max_in_flight)
        self.stats.start(run.now)
        raised: BaseException | None = None
        with fewer_collections():  # a run's garbage is freed by reference counting: see collector.py
            try:
                async with asyncio.TaskGroup() as tasks:
                    run.tasks = tasks
                    run.feeder = tasks.create_task(self._feed(Source(requests), transport))
                    if self.stopping:  # stopped before it started
                        run.feeder.cancel()
                    finisher = tasks.create_task(self._finish())
                    try:
                        yield Results(run, run.results)
                    except BaseException as error:  # raised again below, so the TaskGroup does not wrap it in a group
                        raised = error
                    finally:
                        if not finisher.done():  # the consumer left before the end: nothing may outlive the block
                            self.abort("the caller stopped reading results")
                            finisher.cancel()
                if raised is not None:
                    raise raised
            finally:
                await self._end(transport)

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

    async def _feed(self, source: Source, transport: Transport) -> None:
        """Until the input is done or the run stops: wait at each gate in turn, then start the attempt."""
        run = self._run
        attempts = Attempts(run, self._feedback, self._slots, transport, self.budget)
        try:
            while True:
                for before in self._before:
                    if not await before.wait(None):
                        return
                try:
                    job = await self._intake.next_job(source)
                except Exception as error:
                    run.fail_run(f"reading the requests failed: {type(error).__name__}: {error}", error)
                    return
                if job is None:
                    return
                for gate in self._gates:
                    if not await gate.wait(job):
                        return
                lane, mark = job.lane, job.mark
                assert lane is not None and mark is not None and run.tasks is not None
                lane.sending(mark.sent_at)
                attempt = run.tasks.create_task(attempts.run(job))
                run.in_flight.add(attempt)
                # Also when it is cancelled before its first step (an abort), when its own `finally` never runs.
                attempt.add_done_callback(run.in_flight.discard)
        except Exception as error:  # a bug of ours: stop, and say so, rather than leave the consumer waiting
            run.fail_run(f"internal error: {type(error).__name__}: {error}", error)
        finally:
            await source.aclose()

    async def _finish(self) -> None:
        """Once the feeder is done (or stopped), let the attempts in flight finish, then end the results."""
        run = self._run
        assert run.feeder is not None
        await asyncio.wait([run.feeder])
        while run.in_flight:
            done, _ = await asyncio.wait(set(run.in_flight))
            run.in_flight.difference_update(done)  # a task done stays out: waiting on it again would spin
        await run.results.put(END)

    async def _end(self, transport: Transport) -> None:
        """The run is over, however it ended: its counters set, and what it opened closed."""
        run = self._run
        now = run.now()
        control, needed_in_flight = self.lanes.end_report(now)
        self.stats.finish(
            now, unfinished=run.scheduler.open_count, control=control, needed_in_flight=needed_in_flight,
            lanes=self.lanes.reports(), dropped_accounts=self.lanes.dropped,
        )
        run.show_limits()
        if self._transport is None:
            await transport.aclose()
        if self._given_limiter is None:
            lanes = self.lanes.all()
            for limiter in {id(lane.limiter): lane.limiter for lane in lanes}.values():
                with contextlib.suppress(Exception):  # a limiter that cannot close loses nothing of the run's
                    await limiter.aclose()


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
