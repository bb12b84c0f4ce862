"""When the next request may be sent, as a benchmark's arrival process: even gaps, or Poisson's.

Usage::

    arrivals = Arrivals("poisson", seed=0)
    at = arrivals.due(rate=10.0)            # the earliest the next send may go (the last release + a gap)
    ...                                      # wait until then, then on to the rate limiter
    arrivals.released(now)

`even` with no rate is the processor's own pacing: no wait here, the limiter spaces the sends evenly at
the limits. With a rate (sends per second), `even` waits 1/rate between sends (a fixed rate, as benchmark
tools call it), and `poisson` an exponentially distributed gap of mean 1/rate, so sends form a Poisson
process, as `vllm bench serve --request-rate` and genai-perf send. The gap is counted from the previous
release, not from when that one was due: a run that fell behind does not catch up with a burst. The
limiter comes after, so sends never exceed the limits: bursts a Poisson process makes above them wait.

Pure: no clock (the caller passes `now`), a seeded generator, so a run's gaps can be replayed.
"""

from __future__ import annotations

import math
import random
from typing import Literal, get_args

__all__ = ["ArrivalMode", "ARRIVAL_MODES", "Arrivals", "gap"]

ArrivalMode = Literal["even", "poisson"]
ARRIVAL_MODES: tuple[ArrivalMode, ...] = get_args(ArrivalMode)


def gap(mode: ArrivalMode, rate: float | None, rng: random.Random) -> float:
    """Seconds from one send to the next at `rate` sends per second (none, or infinite: no gap)."""
    if rate is None or not math.isfinite(rate):
        return 0.0
    if rate <= 0:
        raise ValueError(f"an arrival rate must be positive, got {rate}")
    return rng.expovariate(rate) if mode == "poisson" else 1.0 / rate


class Arrivals:
    """The arrival process of one run: the time of the last release, and the gap drawn for the next."""

    __slots__ = ("mode", "_rng", "_last", "_gap")

    def __init__(self, mode: ArrivalMode = "even", *, seed: int | None = 0) -> None:
        if mode not in ARRIVAL_MODES:
            raise ValueError(f"arrivals must be one of {ARRIVAL_MODES}, got {mode!r}")
        self.mode = mode
        self._rng = random.Random(seed)
        self._last: float | None = None
        self._gap: float | None = None

    def __repr__(self) -> str:
        return f"Arrivals({self.mode!r})"

    def due(self, rate: float | None) -> float | None:
        """The earliest time the next send may go; None: at once (the first send, or no rate)."""
        if self._last is None:
            return None
        if self._gap is None:  # drawn once per send, at the rate in force when it is asked for
            self._gap = gap(self.mode, rate, self._rng)
        return self._last + self._gap

    def released(self, now: float) -> None:
        """A send went to the limiter at `now`: the next gap counts from here."""
        self._last = now
        self._gap = None
