"""Virtual time for tests: minutes of rate limits, backoffs and 429 pauses in milliseconds, and a hang is an error.

The project's own tests run on it, and so can yours: a test of code that uses the processor need not wait
on the wall clock (a server's 2 s `retry-after` costs 2 s of real time otherwise). Run the async API on
a `VirtualTimeLoop`, with a transport that needs no socket (your function, or the project's mock)::

    from rate_limited_processor import Processor, Settings, TransportRequest
    from rate_limited_processor.testing import run_virtual, virtual_time

    def rate_limited_once(request: TransportRequest) -> ...: ...   # answers 429 with retry-after: 2, then 200

    async def main() -> float:
        settings = Settings("http://test/v1/chat/completions", api_key=None)
        async for result in Processor(settings, transport=rate_limited_once).process(requests):
            ...
        return virtual_time()

    elapsed = run_virtual(main())   # about 2.0 "seconds", at once

`rate_limited_processor.mock_server.MockTransport(MockApi(MockConfig(...)))` is the mock API as a transport
(its buckets, latency and faults on the same clock). `process_requests_sync` runs its own loop in a thread
and does not use this one: use `Processor` or `process_requests` inside `run_virtual`.

How: the loop's `time()` is a number the loop moves itself. Whenever nothing is ready to run, it jumps
straight to the next timer instead of waiting for it. Everything in asyncio reads time from the loop, and
so do the runner and the limiter (their default clock is the loop's), so one loop makes a whole run
virtual. Real I/O does not belong here (sockets, files that block): with nothing scheduled and nothing
ready the run could never go on, and the loop raises `Deadlock` at once instead of hanging the test.

Why not the `looptime` plugin, which does the same: a hang must fail at once rather than wait for a real
timeout, and this is one small class a test can read, with no pytest plugin between it and the loop.
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
