"""Which request goes next, and which are still open: the runner's bookkeeping, pure (no asyncio, no clock).

Usage::

    scheduler = Scheduler(max_waiting_retries=1_000, max_ahead=None)
    position = scheduler.open()              # a request was read: it is open until its result is taken
    scheduler.add_retry(job, due=now + 2.0)  # it failed and waits for its retry
    job = scheduler.due_retry(now)           # a retry whose time has come goes before anything new
    scheduler.close(position)                # its result was taken by the consumer

"Open" is the one count the run needs at its end: a request that was read but whose result the consumer
never took (in flight, waiting for a retry, or finished but not taken when the run stopped) is unfinished,
and a rerun sends it. Nothing else counts them.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["Scheduler"]

Job = TypeVar("Job")


class Scheduler(Generic[Job]):
    """The retry queue (earliest due first) and the positions still open, in the order they were read."""

    __slots__ = ("max_waiting_retries", "max_ahead", "_retries", "_sequence", "_open", "_next_position")

    def __init__(self, *, max_waiting_retries: int, max_ahead: int | None = None) -> None:
        """New requests are held back while `max_waiting_retries` retries wait (a server failing everything
        must not make the run read its whole input into memory). With `max_ahead`, the run reads at most that
        far past the oldest open request, for a consumer that restores input order."""
        if max_ahead is not None and max_ahead < 1:
            raise ValueError(f"max_ahead must be at least 1, got {max_ahead}")
        self.max_waiting_retries = max_waiting_retries
        self.max_ahead = max_ahead
        self._retries: list[tuple[float, int, Job]] = []
        self._sequence = itertools.count()
        self._open: OrderedDict[int, None] = OrderedDict()
        self._next_position = 0

    def __repr__(self) -> str:
        return f"Scheduler({len(self._open)} open, {len(self._retries)} retries waiting)"

    # -- what is open -------------------------------------------------------------------------------

    def open(self) -> int:
        """A request was read: its 0-based position, open until `close`."""
        position = self._next_position
        self._next_position += 1
        self._open[position] = None
        return position

    def close(self, position: int) -> None:
        """The consumer took this request's result: it is done."""
        self._open.pop(position, None)

    @property
    def open_count(self) -> int:
        """Requests read whose result has not been taken: what a stopped run leaves unfinished."""
        return len(self._open)

    def may_read(self) -> bool:
        """Whether the next input item may be read now."""
        if len(self._retries) >= self.max_waiting_retries:
            return False
        if self.max_ahead is None or not self._open:
            return True
        oldest = next(iter(self._open))
        return self._next_position - oldest < self.max_ahead

    # -- retries ------------------------------------------------------------------------------------

    def add_retry(self, job: Job, due: float) -> None:
        heapq.heappush(self._retries, (due, next(self._sequence), job))

    def due_retry(self, now: float) -> Job | None:
        """The retry that has waited longest past its due time, if any has come due."""
        if self._retries and self._retries[0][0] <= now:
            return heapq.heappop(self._retries)[2]
        return None

    def next_retry_at(self) -> float | None:
        """When the next retry comes due (None when none waits)."""
        return self._retries[0][0] if self._retries else None

    @property
    def retries_waiting(self) -> int:
        return len(self._retries)
