"""What the parts of one run share: its settings, clock, counters, lanes and queues, and how it stops.

The feeder's gates (`gates.py`), the reading of requests (`intake.py`), the attempts (`attempt.py`) and what the
run learns from answers (`feedback.py`) each hold this one object; `Processor` makes it and scopes the run.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from typing import Any

from ..base.clock import Clock
from ..base.models import RequestResult
from ..config.credentials import Scrubber
from ..config.settings import Settings
from ..core.scheduler import Scheduler
from ..core.stats import RunStats
from .health import Health
from .job import Job
from .lanes import Lanes

__all__ = ["RunContext", "Store"]

logger = logging.getLogger("rate_limited_processor")

#: Where `Processor.process_into` hands each final result: True once it is kept.
Store = Callable[[RequestResult], bool]


class RunContext:
    """One run's shared state, and the few things every part may do to the run: stop it, fail it, wait for a
    change, deliver a result."""

    __slots__ = (
        "settings", "clock", "now", "stats", "lanes", "scheduler", "health", "scrub", "changed", "in_flight",
        "results", "tasks", "feeder", "store", "failure",
    )

    def __init__(self, settings: Settings, *, clock: Clock, stats: RunStats, lanes: Lanes, scheduler: Scheduler[Job], scrub: Scrubber) -> None:
        self.settings = settings
        self.clock = clock
        #: `clock.now`, bound to the running loop once the run starts (`bound_to_loop`).
        self.now: Callable[[], float] = clock.now
        self.stats = stats
        self.lanes = lanes
        self.scheduler = scheduler
        self.health = Health(scrub)
        self.scrub = scrub
        #: Set whenever an attempt or a result changes something the feeder may be waiting on.
        self.changed = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.results: asyncio.Queue[Any] = asyncio.Queue(maxsize=settings.max_in_flight)
        self.tasks: asyncio.TaskGroup | None = None
        self.feeder: asyncio.Task[None] | None = None
        self.store: Store | None = None
        #: What made the run fail, raised as RunStopped's cause.
        self.failure: BaseException | None = None

    @property
    def stopping(self) -> bool:
        """The run takes no new requests and retries nothing (it was stopped, or something failed for all)."""
        return self.stats.stop_reason is not None

    def stop(self, reason: str) -> None:
        """Take no more requests; those in flight finish. The first reason wins."""
        self.stats.stop(reason)
        feeder = self.feeder
        if feeder is not None and not feeder.done() and feeder is not asyncio.current_task():
            feeder.cancel()

    def abort(self, reason: str) -> None:
        """Stop at once: requests in flight are abandoned too (a rerun sends them again)."""
        self.stop(reason)
        for task in list(self.in_flight):
            task.cancel()

    def fail_run(self, reason: str, error: BaseException) -> None:
        """Something every request depends on failed: stop, and say why (the cause goes with RunStopped)."""
        reason = self.scrub(reason)
        logger.error("%s; stopping the run", reason)
        self.failure = error
        self.stop(reason)

    def limiter_failed(self, error: Exception) -> None:
        """A call to a lane's limiter raised: nothing can be sent within the limits any more."""
        self.fail_run(f"the rate limiter failed: {type(error).__name__}: {error}", error)

    async def wait_for_change(self, until: float | None = None, fetching: asyncio.Future[Any] | None = None) -> None:
        """Until an attempt or a result changes something, the next input item arrives, or the clock reaches `until`."""
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.changed.wait())]
        if until is not None:
            waiters.append(asyncio.ensure_future(self.clock.sleep(max(0.0, until - self.now()))))
        try:
            await asyncio.wait([*waiters, fetching] if fetching is not None else waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def deliver(self, result: RequestResult) -> None:
        """A final result: to the store, or to the consumer through the queue."""
        store = self.store
        if store is None:
            await self.results.put(result)
            return
        try:
            stored = store(result)
        except Exception as error:
            self.failure = error
            logger.error("storing a result failed: %s", self.scrub("".join(traceback.format_exception(error))))
            self.abort(self.scrub(f"storing a result failed: {type(error).__name__}: {error}"))
            return
        if stored:
            self.done(result)

    def done(self, result: RequestResult) -> None:
        """The consumer took this result and came back for more (or the store kept it): it is done."""
        self.stats.record_result(result)
        if result.position is not None:
            self.scheduler.close(result.position)
        self.changed.set()

    def show_limits(self) -> None:
        """The limits the progress display and the summary hold the run's pace against (`Lanes.pace`)."""
        pace = self.lanes.pace()
        if pace is not None:
            self.stats.pace(*pace)
