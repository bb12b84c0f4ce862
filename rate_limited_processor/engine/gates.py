"""The gates the feeder awaits in turn before a request goes: "may the next request go?" answered in one place.

Usage (the feeder; each gate is an object with one method, as aiometer's meters are)::

    for gate in (Slots(run), OneAtATime(run)):                  # before the next request is read
        await gate.wait(None)
    job = await intake.next_job(source)
    for gate in (BudgetGate(run, budget), LaneGate(run, feedback), ArrivalsGate(run), LimiterGate(run), DailyGate(run, daily)):
        if not await gate.wait(job):                            # False: the run stops
            return

In order: a slot of `--max_in_flight`; one request at a time while the endpoint fails or the server answers
nobody (`Health.one_at_a_time`); the request's estimated cost in `--max_cost_usd`; the lane (account, model)
that can take it soonest, once it may take one more (not while its first request awaits the answer that tells its
limits, nor beyond its window of requests in flight); the arrival process (`--arrivals`, none by default);
the lane's limiter, for its estimated tokens; and the day's limits (`--max_requests_per_day`, `--max_tokens_per_day`),
last, so the day counts exactly the requests sent. A gate that lets the request through at once does not yield to the
event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ..core.arrivals import Arrivals
from ..core.budget import Budget
from ..core.daily_limit import DailyLimit, SharedDaySpend, day_of
from ..core.learned_limits import SendMark
from .context import RunContext
from .feedback import Feedback
from .job import Job
from .lanes import Lane

__all__ = ["ArrivalsGate", "BudgetGate", "DailyGate", "Gate", "LaneGate", "LimiterGate", "OneAtATime", "Slots"]

logger = logging.getLogger("rate_limited_processor")

_Passing = TypeVar("_Passing", contravariant=True)


class Gate(Protocol[_Passing]):
    """One condition a request waits on before it is sent."""

    async def wait(self, job: _Passing, /) -> bool:
        """Return once `job` may pass (True), or once the run stops instead (False)."""
        ...


class Slots:
    """`--max_in_flight`: a slot per attempt in flight, given back when the attempt ends (`release`)."""

    __slots__ = ("_run", "_semaphore")

    def __init__(self, run: RunContext) -> None:
        self._run = run
        self._semaphore = asyncio.Semaphore(run.settings.max_in_flight)

    async def wait(self, job: None, /) -> bool:
        if self._semaphore.locked():  # every slot is taken: --max_in_flight, not the limits, sets the pace now
            self._run.stats.waiting_for_slot(True)
            await self._semaphore.acquire()
            self._run.stats.waiting_for_slot(False)
        else:
            await self._semaphore.acquire()
        return True

    def release(self) -> None:
        self._semaphore.release()


class OneAtATime:
    """While the endpoint fails or the server answers nobody, the next request waits until none is in flight."""

    __slots__ = ("_run",)

    def __init__(self, run: RunContext) -> None:
        self._run = run

    async def wait(self, job: None, /) -> bool:
        run = self._run
        while run.in_flight and run.health.one_at_a_time:
            run.changed.clear()
            await run.wait_for_change()
        return True


class BudgetGate:
    """`--max_cost_usd`: hold the attempt's estimated cost in the budget. While it does not fit, wait for the attempts
    in flight to settle (answers usually cost less than estimated); when nothing in flight can make room, stop."""

    __slots__ = ("_run", "_budget")

    def __init__(self, run: RunContext, budget: Budget) -> None:
        self._run = run
        self._budget = budget

    async def wait(self, job: Job, /) -> bool:
        run, budget = self._run, self._budget
        cost = budget.estimate(job.request.body, job.prompt_tokens, job.completion_tokens)
        if cost is None:
            self._stop(budget.no_price_reason(job.request.body))
            return False
        while not budget.fits(cost):
            if not run.in_flight:
                self._stop(budget.stop_reason(cost))
                return False
            run.changed.clear()
            await run.wait_for_change()
        budget.reserve(cost)
        job.cost = cost
        return True

    def _stop(self, reason: str) -> None:
        logger.warning("%s; stopping the run (a rerun resumes)", reason)
        self._run.stop(reason)


class LaneGate:
    """The lane (account, model) that can take the request soonest, once it may take one more (`Lane.may_take_one_more`).
    Sets `job.lane`."""

    __slots__ = ("_run", "_feedback", "_tell_new_lanes")

    def __init__(self, run: RunContext, feedback: Feedback, *, tell_new_lanes: bool) -> None:
        """`tell_new_lanes`: every lane shares one limiter given to the run, which is told each new lane's limits."""
        self._run = run
        self._feedback = feedback
        self._tell_new_lanes = tell_new_lanes

    async def wait(self, job: Job, /) -> bool:
        run = self._run
        lane = run.lanes.choose(job.model, job.tokens, job.output_tokens)
        if not (lane.started and lane.may_take_one_more(run.now(), anything_in_flight=bool(run.in_flight))):
            lane = await self._soonest(job)
        # No answer yet to pace by: the rate control's start, growing with time, goes to the limiter at each send.
        if lane.tuner.awaiting_first_answer and lane.first_answer_overdue(run.now()) and not await self._feedback.retune(lane, run.now()):
            return False
        job.lane = lane
        return True

    async def _soonest(self, job: Job) -> Lane:
        run = self._run
        while True:
            lane = run.lanes.choose(job.model, job.tokens, job.output_tokens)
            if not lane.started:  # a new lane: its limiter starts at its limits (a shared, given one is told them)
                lane.started = True
                run.show_limits()
                if self._tell_new_lanes:
                    await self._feedback.apply_limits(lane, lane.applied)
            if lane.may_take_one_more(run.now(), anything_in_flight=bool(run.in_flight)):
                return lane
            run.changed.clear()
            await run.wait_for_change(until=lane.control.first_answer_overdue_at() if lane.probing(run.now()) else None)


class ArrivalsGate:
    """`--arrivals`: the gap the arrival process keeps between sends (none by default: the limiter alone spaces them).
    The request counts as scheduled from when it passes."""

    __slots__ = ("_run", "_arrivals")

    def __init__(self, run: RunContext) -> None:
        self._run = run
        self._arrivals = Arrivals(run.settings.arrivals, seed=run.settings.arrival_seed)

    async def wait(self, job: Job, /) -> bool:
        lane = job.lane
        assert lane is not None
        wait = self._wait(lane)
        if wait > 0:
            await self._run.clock.sleep(wait)
        now = self._run.now()
        self._arrivals.released(now)
        if job.scheduled_at is None:
            job.scheduled_at = now
        return True

    def _wait(self, lane: Lane) -> float:
        """Seconds until the arrival process lets the next send go (0 when none is set). Poisson arrivals without a
        rate of their own run at the request limit of the lane the job goes through."""
        settings = self._run.settings
        rate = settings.request_rate
        if rate is None and settings.arrivals == "poisson":
            per_minute = lane.applied.requests_per_minute
            rate = per_minute / 60 if per_minute is not None else None
        if rate is None:
            return 0.0
        due = self._arrivals.due(rate)
        return due - self._run.now() if due is not None else 0.0


class LimiterGate:
    """The lane's limiter admits the request's estimated tokens. Sets `job.mark`: when it went, and what the lane
    had sent by then (for learning the server's view)."""

    __slots__ = ("_run",)

    def __init__(self, run: RunContext) -> None:
        self._run = run

    async def wait(self, job: Job, /) -> bool:
        lane = job.lane
        assert lane is not None
        try:
            admitted = await lane.limiter.acquire(job.tokens, job.output_tokens)
        except Exception as error:
            self._run.limiter_failed(error)
            return False
        job.mark = SendMark(self._run.now(), admitted.requests, admitted.tokens)
        return True


#: Seconds of wall time between two saves of the day's spend while requests go (and one at each stop and run end).
DAY_SAVE_INTERVAL = 1.0


class DailyGate:
    """`--max_requests_per_day`, `--max_tokens_per_day`: count the request in the day's spend, or, when it would pass a
    daily limit, stop the run (spend does not come back, so nothing is worth waiting for). With `shared` (Redis), the
    day's count is every process's on the same limit key. `save` is given the day's record (`DailyLimit.record`) at
    most every `DAY_SAVE_INTERVAL` seconds and when the run stops here."""

    __slots__ = ("_run", "_daily", "_save", "_saved_at", "_shared")

    def __init__(
        self, run: RunContext, daily: DailyLimit, save: Callable[[dict[str, Any]], None] | None = None, shared: SharedDaySpend | None = None,
    ) -> None:
        self._run = run
        self._daily = daily
        self._save = save
        self._saved_at = float("-inf")
        self._shared = shared

    async def wait(self, job: Job, /) -> bool:
        daily, wall = self._daily, self._run.clock.wall()
        if self._shared is not None:
            counted = await self._take_shared(job.tokens, wall)
            if counted is None:
                return False
        else:
            counted = daily.fits(job.tokens, wall)
            if counted:
                daily.spend(job.tokens, wall)
        if not counted:
            reason = daily.stop_reason(job.tokens, wall)
            logger.warning("%s; stopping the run", reason)
            self._run.stop(reason)
            self._write(wall)
            return False
        return wall - self._saved_at < DAY_SAVE_INTERVAL or self._write(wall)

    async def _take_shared(self, tokens: int, wall: float) -> bool | None:
        """Count the request in the shared day's spend: whether it fitted, or None when the count cannot be reached."""
        assert self._shared is not None
        daily, day = self._daily, day_of(wall)
        try:
            counted, requests, spent_tokens = await self._shared.take(day, tokens, daily.requests, daily.tokens)
        except Exception as error:
            self._run.limiter_failed(error)
            return None
        daily.adopt(day, requests, spent_tokens)
        return counted

    def _write(self, wall: float) -> bool:
        """Save the day's record; a spend that cannot be kept stops the run (a rerun would not know it)."""
        if self._save is None:
            return True
        try:
            self._save(self._daily.record())
        except OSError as error:
            self._run.stop(f"cannot write the day's spend ({error.filename or 'the day file'}): {error.strerror or error}; a rerun resumes")
            return False
        self._saved_at = wall
        return True
