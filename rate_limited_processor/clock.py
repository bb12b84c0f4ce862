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

__all__ = ["Clock", "LOOP_CLOCK", "Now", "Sleep", "loop_time"]

Now = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def loop_time() -> float:
    """The running loop's time; `time.monotonic()` (what a standard loop uses) outside one."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


@dataclass(frozen=True, slots=True)
class Clock:
    """Seconds from some fixed point (`now`), and a way to wait a number of them (`sleep`)."""

    now: Now = loop_time
    sleep: Sleep = asyncio.sleep


#: The event loop's clock: real time on a standard loop, virtual time on a test's virtual loop.
LOOP_CLOCK = Clock()
