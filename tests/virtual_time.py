"""An asyncio event loop on virtual time: minutes of rate limiting in milliseconds, and a hang is an error.

Usage::

    def test_something() -> None:
        async def main() -> None:
            ...                       # asyncio.sleep, timeouts, call_later: all on virtual time
        result = run_virtual(main())   # what main() returned

The loop's `time()` is a number the loop moves itself: whenever nothing is ready to run, it jumps straight
to the next timer instead of waiting for it. Everything in asyncio reads time from the loop, and so do the
runner and the limiter (their default clock is the loop's), so one loop makes a whole run virtual: the
mock's buckets and latency, the client's pacing, backoffs and timeouts. Real I/O does not belong here
(use `MockTransport`, not sockets): with nothing scheduled and nothing ready the run could never go on,
and the loop raises `Deadlock` at once instead of hanging the test.

Why not the `looptime` plugin, which does the same: a hang must fail at once rather than wait for a real
timeout, and this is one small class the tests can read, with no pytest plugin between them and the loop.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["Deadlock", "VirtualTimeLoop", "run_virtual", "virtual_time"]

T = TypeVar("T")



class Deadlock(RuntimeError):
    """Nothing is ready, no timer is set and no I/O can happen: the code under test would wait forever."""


class _FastForwardSelector(selectors.DefaultSelector):
    """Polls without blocking; where the loop would block until its next timer, moves the clock there instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)  # the loop's own wake-up pipe, for call_soon_threadsafe
        if events or timeout == 0:
            return events
        if timeout is None:
            raise Deadlock("nothing is ready to run and no timer is set: the code under test would hang")
        self._loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock jumps to the next timer whenever it would otherwise wait."""

    def __init__(self) -> None:
        # Virtual time starts where real time is: objects a test made before the loop existed (a limiter, a
        # mock's buckets) read `time.monotonic()` then, so their "now" is never ahead of the loop's.
        self._virtual_now = time.monotonic()
        super().__init__(selector=_FastForwardSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += seconds


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a fresh virtual-time loop and return what it returned."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def virtual_time() -> float:
    """The current loop's virtual time (inside `run_virtual`)."""
    return asyncio.get_running_loop().time()
