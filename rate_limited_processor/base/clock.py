"""Time, injected: what the runner and the limiter read the time from and sleep on.

Pure logic never reads a clock; it takes `now`. The loop and the limiter take a `Clock`, a pair of `now`
and `sleep` that must agree with each other. The default reads the running event loop's own time, which
is `time.monotonic()` on a standard loop, so a test that runs the loop in virtual time (see
`tests/virtual_time.py`) moves every sleep, timeout and deadline of a run at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["Clock", "LOOP_CLOCK", "Now", "Sleep", "bound_to_loop", "loop_time", "loop_wall_time"]

Now = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def loop_time() -> float:
    """The running loop's time; `time.monotonic()` (what a standard loop uses) outside one."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def bound_to_loop(now: Now) -> Now:
    """`now` itself; but `loop_time`, inside a running loop, becomes that loop's own `time`: the same reading
    at a fraction of the cost (a run reads the time several times per request). A standard loop's time is
    `time.monotonic()` itself, which is read directly (a virtual loop's own `time` is kept)."""
    if now is loop_time:
        loop = asyncio.events._get_running_loop()
        if loop is not None:
            return time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
    return now


def loop_wall_time() -> float:
    """The running loop's time as epoch seconds: `time.time()` on a standard loop, and on a virtual one
    the virtual time placed on the calendar, so an RFC 3339 reset an API states (Anthropic) reads alike."""
    return time.time() - time.monotonic() + loop_time()


@dataclass(frozen=True, slots=True)
class Clock:
    """Seconds from some fixed point (`now`), a way to wait a number of them (`sleep`), and the same time
    as epoch seconds (`wall`), for the timestamps APIs state."""

    now: Now = loop_time
    sleep: Sleep = asyncio.sleep
    wall: Now = loop_wall_time


#: The event loop's clock: real time on a standard loop, virtual time on a test's virtual loop.
LOOP_CLOCK = Clock()
